"""CIFAR PreResNets as Network Slimming prunes them: pre-activation bottlenecks, depth 9n+2 (PreResNet-164: n=18).

A stem conv of 16; three stages of n bottlenecks (16, 32, 64 planes, x4 out; stride 2 in stages 2 and 3);
each block BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1, added to its input (the first block of a stage
adds a 1x1 projection conv of its input instead); a final BN-ReLU, global pool and one linear.

The residual stream has no BN that writes it: in a pre-activation net every BN sits in front of a conv. So,
as in the Network Slimming code, each BN that reads the stream sits behind a channel selection (`select=true`,
the default): the block reads a subset of the stream's channels, that subset is its own group
(`stageS.blockB.select`, and `head.select` in front of the classifier), and slimming prunes it by that BN's
gammas while the stream keeps its width. Selecting before the BN instead of after it, as the reference does,
computes the same thing, since a BN and a ReLU act on each channel alone. With `select=false` each BN joins
the stream it reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from widthtune.models.catalog import PRERESNET_CIFAR
from widthtune.models.channel_selection import ChannelSelection, first_channels
from widthtune.models.initialization import kaiming_init
from widthtune.models.space import ChannelGroup, ChannelSpace, Member
from widthtune.models.widths import scaled_width

DEFAULTS = PRERESNET_CIFAR.defaults
PLANES = (16, 32, 64)
EXPANSION = 4


def blocks_per_stage(options: Mapping[str, Any]) -> int:
    """n in depth = 9n + 2, with an error that says which depths exist."""
    depth = options["depth"]
    if not isinstance(depth, int) or depth < 11 or (depth - 2) % 9:
        raise ValueError(f"preresnet_cifar: depth={depth!r} is not 9n+2 with n >= 1 (e.g. 56, 110, 164)")
    return (depth - 2) // 9


def _base(width: int, options: Mapping[str, Any]) -> int:
    return scaled_width(width, options["width"], options["divisor"])


def _reader(s: int, b: int) -> str:
    """The group a block's first BN and conv read: its selection, when the block selects."""
    return f"stage{s}.block{b}.select"


def channel_space(options: Mapping[str, Any]) -> ChannelSpace:
    """The stem, the stage streams, each block's selection and two inner groups, and the head's selection."""
    n = blocks_per_stage(options)
    select = bool(options["select"])
    common = {"min": options["min_width"], "divisor": options["divisor"]}
    stem = _base(PLANES[0], options)
    table: list[tuple[str, int, int | None, int | None, str, list[Member]]] = []
    stem_members = [Member("conv1")]
    table.append(("stem", stem, 0, None, "stem", stem_members))
    source, source_width = stem_members, stem
    for s, planes in enumerate(PLANES, start=1):
        mid, out = _base(planes, options), _base(planes * EXPANSION, options)
        stream: list[Member] = []
        for b in range(1, n + 1):
            path = f"layer{s}.{b - 1}"
            readers = [Member(f"{path}.bn1"), Member(f"{path}.conv1", "in")]
            if select:
                source.append(Member(f"{path}.select", "in"))
                table.append(
                    (_reader(s, b), source_width, s, b, "select", [Member(f"{path}.select"), *readers])
                )
            else:
                source.extend(readers)
            if b == 1:
                source.append(Member(f"{path}.downsample", "in"))
                stream.append(Member(f"{path}.downsample"))
            for k in (1, 2):
                members = [
                    Member(f"{path}.conv{k}"),
                    Member(f"{path}.bn{k + 1}"),
                    Member(f"{path}.conv{k + 1}", "in"),
                ]
                table.append((f"stage{s}.block{b}.mid{k}", mid, s, b, f"mid{k}", members))
            stream.append(Member(f"{path}.conv3"))
            if b == 1:
                table.append((f"stage{s}.stream", out, s, None, "stream", stream))
            source, source_width = stream, out
    head = [Member("bn"), Member("fc", "in")]
    if select:
        source.append(Member("select", "in"))
        table.append(("head.select", source_width, len(PLANES), None, "select", [Member("select"), *head]))
    else:
        source.extend(head)
    groups = tuple(
        ChannelGroup(name, base, tuple(members), stage=stage, block=block, role=role, **common)
        for name, base, stage, block, role, members in table
    )
    return ChannelSpace(groups)


def _selection(selected: int, available: int, name: str) -> ChannelSelection:
    return first_channels(selected, available, name, "preresnet_cifar")


class Bottleneck(nn.Module):
    """Pre-activation bottleneck: (select)-BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1, plus the input."""

    def __init__(
        self, widths: tuple[int, int, int, int, int], stride: int, project: bool, select: str | None
    ) -> None:
        super().__init__()
        available, reads, mid1, mid2, out = widths
        if select is not None:
            self.select = _selection(reads, available, select)
        self.bn1 = nn.BatchNorm2d(reads)
        self.conv1 = nn.Conv2d(reads, mid1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid1)
        self.conv2 = nn.Conv2d(mid1, mid2, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid2)
        self.conv3 = nn.Conv2d(mid2, out, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        if project:
            self.downsample = nn.Conv2d(available, out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.select(x) if hasattr(self, "select") else x
        out = self.conv1(self.relu(self.bn1(out)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + (self.downsample(x) if hasattr(self, "downsample") else x)


class PreResNetCifar(nn.Module):
    """Network Slimming's CIFAR PreResNet with every channel group's width given explicitly."""

    def __init__(self, widths: Mapping[str, int], options: Mapping[str, Any]) -> None:
        super().__init__()
        n = blocks_per_stage(options)
        select = bool(options["select"])
        self.conv1 = nn.Conv2d(options["in_channels"], widths["stem"], 3, padding=1, bias=False)
        available = widths["stem"]
        for s in range(1, len(PLANES) + 1):
            blocks = []
            for b in range(1, n + 1):
                name = _reader(s, b)
                reads = widths[name] if select else available
                out = widths[f"stage{s}.stream"]
                sizes = (
                    available,
                    reads,
                    widths[f"stage{s}.block{b}.mid1"],
                    widths[f"stage{s}.block{b}.mid2"],
                    out,
                )
                stride = 2 if s > 1 and b == 1 else 1
                blocks.append(Bottleneck(sizes, stride, project=b == 1, select=name if select else None))
                available = out
            self.add_module(f"layer{s}", nn.Sequential(*blocks))
        reads = widths["head.select"] if select else available
        if select:
            self.select = _selection(reads, available, "head.select")
        self.bn = nn.BatchNorm2d(reads)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(reads, options["num_classes"])
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        if hasattr(self, "select"):
            x = self.select(x)
        return self.fc(torch.flatten(self.pool(self.relu(self.bn(x))), 1))


def build(options: Mapping[str, Any], widths: Mapping[str, int]) -> nn.Module:
    """A fresh CIFAR PreResNet at the given widths."""
    return PreResNetCifar(widths, options)
