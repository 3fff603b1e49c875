"""CIFAR ResNets (depth 6n+2, basic blocks, 16/32/64 x width) with zero-pad (A) or projection (C) shortcuts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from widthtune.models.catalog import RESNET_CIFAR
from widthtune.models.initialization import kaiming_init
from widthtune.models.residual import residual_space
from widthtune.models.space import ChannelSpace
from widthtune.models.widths import scaled_width

DEFAULTS = RESNET_CIFAR.defaults
STAGE_WIDTHS = (16, 32, 64)
SHORTCUTS = ("A", "B", "C")


def blocks_per_stage(options: Mapping[str, Any]) -> int:
    """n in depth = 6n + 2, with an error that says which depths exist."""
    depth = options["depth"]
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet_cifar: depth={depth!r} is not 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110)")
    if str(options["shortcut"]).upper() not in SHORTCUTS:
        raise ValueError(
            f"resnet_cifar: shortcut={options['shortcut']!r}; choose A (zero-pad) or C (1x1 conv + BN)"
        )
    return (depth - 2) // 6


def _stream(stage: int) -> str:
    return f"stage{stage}.stream"


def _mid(stage: int, block: int) -> str:
    return f"stage{stage}.block{block}.mid"


def _base(width: int, options: Mapping[str, Any]) -> int:
    return scaled_width(width, options["width"], options["divisor"])


def channel_space(options: Mapping[str, Any]) -> ChannelSpace:
    """Stage streams (coupled by identity adds, the stem in stage 1's) and one mid group per block."""
    n = blocks_per_stage(options)
    widths = [_base(w, options) for w in STAGE_WIDTHS]
    return residual_space(
        blocks=(n, n, n),
        mids=widths,
        streams=widths,
        stem=None,
        convs_per_block=2,
        projection=str(options["shortcut"]).upper() != "A",
        min_width=options["min_width"],
        divisor=options["divisor"],
    )


class PadShortcut(nn.Module):
    """Option A: subsample, then zero-pad (or cut) channels to the block's output width; no parameters."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - x.shape[1]
        if extra < 0:
            return x[:, : self.out_channels]
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, then ReLU."""

    def __init__(self, in_ch: int, mid: int, out_ch: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        if stride == 1 and in_ch == out_ch:
            self.downsample: nn.Module = nn.Identity()
        elif projection:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        else:
            self.downsample = PadShortcut(out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNetCifar(nn.Module):
    """The He et al. CIFAR ResNet with every channel group's width given explicitly."""

    def __init__(self, widths: Mapping[str, int], options: Mapping[str, Any]) -> None:
        super().__init__()
        n = blocks_per_stage(options)
        projection = str(options["shortcut"]).upper() != "A"
        stem = widths[_stream(1)]
        self.conv1 = nn.Conv2d(options["in_channels"], stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        in_ch = stem
        for s in range(1, 4):
            blocks = []
            for b in range(n):
                stride = 2 if s > 1 and b == 0 else 1
                out_ch = widths[_stream(s)]
                blocks.append(BasicBlock(in_ch, widths[_mid(s, b + 1)], out_ch, stride, projection))
                in_ch = out_ch
            self.add_module(f"layer{s}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, options["num_classes"])
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def build(options: Mapping[str, Any], widths: Mapping[str, int]) -> nn.Module:
    """A fresh CIFAR ResNet at the given widths."""
    return ResNetCifar(widths, options)
