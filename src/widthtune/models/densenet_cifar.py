"""CIFAR DenseNets as Network Slimming prunes them: DenseNet-40 (k=12) and DenseNet-BC-100 (k=12).

Three dense blocks of n layers (depth = 3n + 4, or 6n + 4 with bottlenecks), each layer BN-ReLU-conv3x3
writing `growth` channels that every later layer of the block reads concatenated; transitions
BN-ReLU-conv1x1 (times `compression`) then 2x2 average pooling; a stem conv of 2 x growth; a final
BN-ReLU, global pool and one linear. With `bottleneck`, a layer first maps its input to 4 x growth with
BN-ReLU-conv1x1.

Every layer's new channels are a group, as are the stem, the transitions and the bottlenecks; the BN and
the conv that read a concatenation hold those groups side by side (a `Concatenation`), in block order.

With `select=true`, as in the Network Slimming code, a channel selection sits in front of every BN that
reads the features (each layer's first BN, each transition's, the final one): each reader takes its own
subset of the concatenated channels, and that subset is its own group (`stageS.blockB.select`,
`stageS.transition_select`, `head.select`), so slimming prunes each reader's input by its own BN's gammas
while the features themselves keep their width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from widthtune.models.catalog import DENSENET_CIFAR
from widthtune.models.channel_selection import ChannelSelection, first_channels
from widthtune.models.initialization import kaiming_init
from widthtune.models.space import ChannelGroup, ChannelSpace, Concatenation, Member
from widthtune.models.widths import scaled_width

DEFAULTS = DENSENET_CIFAR.defaults
BLOCKS = 3


def layers_per_block(options: Mapping[str, Any]) -> int:
    """n in depth = 3n + 4 (6n + 4 with bottlenecks), with an error that says which depths exist."""
    depth, per_layer = options["depth"], 2 if options["bottleneck"] else 1
    if not isinstance(depth, int) or depth < 3 * per_layer + 4 or (depth - 4) % (3 * per_layer):
        example = "100 or 250 with bottleneck=true" if per_layer == 2 else "40 or 100"
        raise ValueError(
            f"densenet_cifar: depth={depth!r} is not {3 * per_layer}n+4 with n >= 1 (e.g. {example})"
        )
    if not isinstance(options["growth"], int) or options["growth"] < 1:
        raise ValueError(f"densenet_cifar: growth={options['growth']!r} must be a positive integer")
    if not 0 < options["compression"] <= 1:
        raise ValueError(f"densenet_cifar: compression={options['compression']!r} must be in (0, 1]")
    return (depth - 4) // (3 * per_layer)


def _layer(stage: int, block: int) -> str:
    return f"dense{stage}.{block - 1}"


def _groups(options: Mapping[str, Any]) -> list[tuple[str, int, int | None, int | None, str]]:
    """(name, base width, stage, block, role) for every group, in the order the forward pass writes them."""
    n = layers_per_block(options)
    divisor = options["divisor"]
    growth = scaled_width(options["growth"], options["width"], divisor)
    select = bool(options["select"])
    groups = [("stem", scaled_width(2 * options["growth"], options["width"], divisor), 0, None, "stem")]
    channels = groups[0][1]
    for s in range(1, BLOCKS + 1):
        for b in range(1, n + 1):
            if select:
                groups.append((_selector(s, b), channels, s, b, "select"))
            if options["bottleneck"]:
                groups.append((f"stage{s}.block{b}.mid", 4 * growth, s, b, "mid"))
            groups.append((f"stage{s}.block{b}.growth", growth, s, b, "growth"))
            channels += growth
        if s < BLOCKS:
            if select:
                groups.append((_selector(s), channels, s, None, "select"))
            channels = max(divisor, math.floor(channels * options["compression"] / divisor) * divisor)
            groups.append((f"stage{s}.transition", channels, s, None, "transition"))
    if select:
        groups.append((_selector(), channels, BLOCKS, None, "select"))
    return groups


def _selector(stage: int | None = None, block: int | None = None) -> str:
    """The group of the channels a reader selects: a layer's, a transition's, or the head's."""
    if stage is None:
        return "head.select"
    return f"stage{stage}.block{block}.select" if block is not None else f"stage{stage}.transition_select"


def _selection(selected: int, available: int, name: str) -> ChannelSelection:
    return first_channels(selected, available, name, "densenet_cifar")


def channel_space(options: Mapping[str, Any]) -> ChannelSpace:
    """Each layer's growth, bottleneck, the stem and transitions; concatenated readers as `Concatenation`s."""
    n = layers_per_block(options)
    members: dict[str, list[Member]] = {}
    concats: list[Concatenation] = []

    select = bool(options["select"])

    def reads(paths: tuple[str, str], parts: list[str], selector: str) -> None:
        """A BN (out) and a conv or linear (in) reading these groups side by side, or through a selection
        (its path beside the BN's) that reads them and whose group the BN and the consumer read."""
        (norm, consumer), kinds = paths, ("out", "in")
        if select:
            selection = f"{norm.rpartition('.')[0]}.select".lstrip(".")
            members[selector] += [Member(selection), Member(norm), Member(consumer, "in")]
            norm, consumer, kinds = selection, "", ("in",)
        for path, kind in zip((norm, consumer), kinds, strict=False):
            if len(parts) == 1:
                members[parts[0]].append(Member(path, kind))  # type: ignore[arg-type]
            else:
                concats.append(Concatenation(path, kind, tuple(parts)))  # type: ignore[arg-type]

    table = _groups(options)
    for name, *_ in table:
        members[name] = []
    members["stem"].append(Member("conv1"))
    parts = ["stem"]
    for s in range(1, BLOCKS + 1):
        for b in range(1, n + 1):
            layer = _layer(s, b)
            reads((f"{layer}.bn1", f"{layer}.conv1"), parts, _selector(s, b))
            growth = f"stage{s}.block{b}.growth"
            if options["bottleneck"]:
                mid = f"stage{s}.block{b}.mid"
                members[mid] += [
                    Member(f"{layer}.conv1"),
                    Member(f"{layer}.bn2"),
                    Member(f"{layer}.conv2", "in"),
                ]
                members[growth].append(Member(f"{layer}.conv2"))
            else:
                members[growth].append(Member(f"{layer}.conv1"))
            parts = [*parts, growth]
        if s < BLOCKS:
            reads((f"trans{s}.bn", f"trans{s}.conv"), parts, _selector(s))
            members[f"stage{s}.transition"].append(Member(f"trans{s}.conv"))
            parts = [f"stage{s}.transition"]
    reads(("bn", "fc"), parts, _selector())
    common = {"min": options["min_width"], "divisor": options["divisor"]}
    groups = tuple(
        ChannelGroup(name, base, tuple(members[name]), stage=stage, block=block, role=role, **common)
        for name, base, stage, block, role in table
    )
    return ChannelSpace(groups, tuple(concats))


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 (after a BN-ReLU-conv1x1 bottleneck) on the concatenation of every earlier output."""

    def __init__(
        self, in_ch: int, mid: int | None, growth: int, select: ChannelSelection | None = None
    ) -> None:
        super().__init__()
        if select is not None:
            self.select = select
            in_ch = len(select.indexes)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU(inplace=True)
        if mid is None:
            self.conv1 = nn.Conv2d(in_ch, growth, 3, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(mid)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(mid, growth, 3, padding=1, bias=False)
        self.bottleneck = mid is not None

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        if hasattr(self, "select"):
            x = self.select(x)
        x = self.conv1(self.relu1(self.bn1(x)))
        if self.bottleneck:
            x = self.conv2(self.relu2(self.bn2(x)))
        return x


class Transition(nn.Module):
    """BN-ReLU-conv1x1 to the compressed width, then 2x2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int, select: ChannelSelection | None = None) -> None:
        super().__init__()
        if select is not None:
            self.select = select
            in_ch = len(select.indexes)
        self.bn = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "select"):
            x = self.select(x)
        return self.pool(self.conv(self.relu(self.bn(x))))


class DenseNetCifar(nn.Module):
    """Huang et al.'s CIFAR DenseNet with every channel group's width given explicitly."""

    def __init__(self, widths: Mapping[str, int], options: Mapping[str, Any]) -> None:
        super().__init__()
        n = layers_per_block(options)

        def selection(name: str, available: int) -> ChannelSelection | None:
            return _selection(widths[name], available, name) if options["select"] else None

        self.conv1 = nn.Conv2d(options["in_channels"], widths["stem"], 3, padding=1, bias=False)
        channels = widths["stem"]
        for s in range(1, BLOCKS + 1):
            layers = []
            for b in range(1, n + 1):
                mid = widths[f"stage{s}.block{b}.mid"] if options["bottleneck"] else None
                growth = widths[f"stage{s}.block{b}.growth"]
                layers.append(DenseLayer(channels, mid, growth, selection(_selector(s, b), channels)))
                channels += growth
            self.add_module(f"dense{s}", nn.ModuleList(layers))
            if s < BLOCKS:
                transition = widths[f"stage{s}.transition"]
                self.add_module(
                    f"trans{s}", Transition(channels, transition, selection(_selector(s), channels))
                )
                channels = transition
        head = selection(_selector(), channels)
        if head is not None:
            self.select = head
            channels = len(head.indexes)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, options["num_classes"])
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for s in range(1, BLOCKS + 1):
            features = [x]
            for layer in getattr(self, f"dense{s}"):
                features.append(layer(features))
            x = torch.cat(features, 1)
            if s < BLOCKS:
                x = getattr(self, f"trans{s}")(x)
        if hasattr(self, "select"):
            x = self.select(x)
        return self.fc(torch.flatten(self.pool(self.relu(self.bn(x))), 1))


def build(options: Mapping[str, Any], widths: Mapping[str, int]) -> nn.Module:
    """A fresh CIFAR DenseNet at the given widths."""
    return DenseNetCifar(widths, options)
