"""MobileNetV2 with a CIFAR (stride-1) or ImageNet stem; every stream and expansion width is a group."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from widthtune.models.catalog import MOBILENET_V2
from widthtune.models.initialization import kaiming_init
from widthtune.models.space import ChannelGroup, ChannelSpace, Member

DEFAULTS = MOBILENET_V2.defaults
# (expansion t, channels c, repeats n, stride s) per stage.
IMAGENET_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
CIFAR_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 1),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEMS = ("cifar", "imagenet")


def make_divisible(value: float, divisor: int) -> int:
    """torchvision's rounding: nearest multiple of divisor, never more than 10% below the value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _setting(options: Mapping[str, Any]) -> tuple[tuple[int, int, int, int], ...]:
    """(t, c, n, s) per stage; `depth_mult` scales the repeats of every stage but the first and the last."""
    stem = str(options["stem"]).lower()
    if stem not in STEMS:
        raise ValueError(f"mobilenet_v2: stem={options['stem']!r}; choose one of {', '.join(STEMS)}")
    setting = CIFAR_SETTING if stem == "cifar" else IMAGENET_SETTING
    depth = options.get("depth_mult", 1.0)
    if not depth > 0:
        raise ValueError(f"mobilenet_v2: depth_mult={depth!r} must be positive")
    if depth == 1:
        return setting
    last = len(setting) - 1
    return tuple(
        (t, c, n if i in (0, last) else max(1, math.ceil(n * depth - 1e-9)), s)
        for i, (t, c, n, s) in enumerate(setting)
    )


def _blocks(options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every inverted residual block: its features index, stage, position, input/output groups, base widths."""
    width, divisor = options["width"], options["divisor"]
    base = {"stem": make_divisible(32 * width, divisor)}
    blocks, index, previous = [], 1, "stem"
    for stage, (t, c, n, s) in enumerate(_setting(options), start=1):
        stream = f"stage{stage}.stream"
        base[stream] = make_divisible(c * width, divisor)
        for i in range(n):
            hidden = round(base[previous] * t)
            blocks.append(
                {
                    "index": index,
                    "stage": stage,
                    "block": i + 1,
                    "t": t,
                    "stride": s if i == 0 else 1,
                    "input": previous,
                    "output": stream,
                    "hidden": hidden,
                    "base": base,
                }
            )
            index, previous = index + 1, stream
    return blocks


def _last_channel(options: Mapping[str, Any]) -> int:
    return make_divisible(1280 * max(1.0, options["width"]), options["divisor"])


def channel_space(options: Mapping[str, Any]) -> ChannelSpace:
    """Streams couple a stage's block outputs (residual adds); depthwise convs follow their expansion group."""
    blocks = _blocks(options)
    common = {"min": options["min_width"], "divisor": options["divisor"]}
    streams: dict[str, list[Member]] = {"stem": [Member("features.0.0"), Member("features.0.1")]}
    expands: list[ChannelGroup] = []
    for blk in blocks:
        prefix = f"features.{blk['index']}.conv"
        streams.setdefault(blk["output"], [])
        if blk["t"] == 1:
            # No expansion conv: the depthwise conv runs on (and follows) the input stream.
            streams[blk["input"]] += [
                Member(f"{prefix}.0.0"),
                Member(f"{prefix}.0.0", "in"),
                Member(f"{prefix}.0.1"),
                Member(f"{prefix}.1", "in"),
            ]
            streams[blk["output"]] += [Member(f"{prefix}.1"), Member(f"{prefix}.2")]
            continue
        streams[blk["input"]].append(Member(f"{prefix}.0.0", "in"))
        streams[blk["output"]] += [Member(f"{prefix}.2"), Member(f"{prefix}.3")]
        members = (
            Member(f"{prefix}.0.0"),
            Member(f"{prefix}.0.1"),
            Member(f"{prefix}.1.0"),
            Member(f"{prefix}.1.0", "in"),
            Member(f"{prefix}.1.1"),
            Member(f"{prefix}.2", "in"),
        )
        expands.append(
            ChannelGroup(
                f"stage{blk['stage']}.block{blk['block']}.expand",
                blk["hidden"],
                members,
                stage=blk["stage"],
                block=blk["block"],
                role="expand",
                **common,
            )
        )
    head_index = blocks[-1]["index"] + 1
    streams[blocks[-1]["output"]].append(Member(f"features.{head_index}.0", "in"))
    base = blocks[-1]["base"]
    groups = [ChannelGroup("stem", base["stem"], tuple(streams["stem"]), stage=0, role="stream", **common)]
    for stage in range(1, len(_setting(options)) + 1):
        name = f"stage{stage}.stream"
        groups.append(
            ChannelGroup(name, base[name], tuple(streams[name]), stage=stage, role="stream", **common)
        )
        groups += [g for g in expands if g.stage == stage]
    head = (
        Member(f"features.{head_index}.0"),
        Member(f"features.{head_index}.1"),
        Member("classifier.1", "in"),
    )
    groups.append(
        ChannelGroup(
            "head", _last_channel(options), head, stage=len(_setting(options)) + 1, role="head", **common
        )
    )
    return ChannelSpace(tuple(groups))


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv, BN, ReLU6 -- torchvision's Conv2dNormActivation layout, so module paths match torchvision's."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (3x3), project (1x1, linear); residual when shape is kept."""

    def __init__(self, in_ch: int, hidden: int | None, out_ch: int, stride: int, residual: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dw = in_ch
        if hidden is not None:
            layers.append(conv_bn_relu(in_ch, hidden, 1))
            dw = hidden
        layers += [
            conv_bn_relu(dw, dw, 3, stride, groups=dw),
            nn.Conv2d(dw, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = residual  # structural (repeat blocks of a stage), not a coincidence of widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 whose module paths match torchvision's, with free widths per group."""

    def __init__(self, widths: Mapping[str, int], options: Mapping[str, Any]) -> None:
        super().__init__()
        stem_stride = 1 if str(options["stem"]).lower() == "cifar" else 2
        features: list[nn.Module] = [conv_bn_relu(options["in_channels"], widths["stem"], 3, stem_stride)]
        for blk in _blocks(options):
            hidden = None if blk["t"] == 1 else widths[f"stage{blk['stage']}.block{blk['block']}.expand"]
            features.append(
                InvertedResidual(
                    widths[blk["input"]],
                    hidden,
                    widths[blk["output"]],
                    blk["stride"],
                    residual=blk["block"] > 1,
                )
            )
        features.append(conv_bn_relu(widths[f"stage{len(_setting(options))}.stream"], widths["head"], 1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(options["dropout"]), nn.Linear(widths["head"], options["num_classes"])
        )
        kaiming_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build(options: Mapping[str, Any], widths: Mapping[str, int]) -> nn.Module:
    """A fresh MobileNetV2 at the given widths."""
    return MobileNetV2(widths, options)
