"""CIFAR VGG-11/13/16/19 in the Network Slimming configuration: BN after each conv, global pool, one linear."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from widthtune.models.catalog import VGG_CIFAR
from widthtune.models.initialization import kaiming_init
from widthtune.models.space import ChannelGroup, ChannelSpace, Member
from widthtune.models.widths import scaled_width

DEFAULTS = VGG_CIFAR.defaults
CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
}


def layout(options: Mapping[str, Any]) -> list[tuple[str, int, int, int, int]]:
    """(group name, base width, stage, block, index in `features`) for every conv."""
    depth = options["depth"]
    if depth not in CONFIGS:
        raise ValueError(f"vgg_cifar: depth={depth!r}; choose one of {', '.join(map(str, CONFIGS))}")
    divisor = options["divisor"]
    convs, stage, block, index = [], 1, 0, 0
    for item in CONFIGS[depth]:
        if item == "M":
            stage, block, index = stage + 1, 0, index + 1
            continue
        block += 1
        base = scaled_width(int(item), options["width"], divisor)
        convs.append((f"conv{len(convs) + 1}", base, stage, block, index))
        index += 3  # conv, BN, ReLU
    return convs


def channel_space(options: Mapping[str, Any]) -> ChannelSpace:
    """One group per conv: its output, its BN, and the next conv's (or the classifier's) input."""
    convs = layout(options)
    groups = []
    for i, (name, base, stage, block, index) in enumerate(convs):
        consumer = (
            Member(f"features.{convs[i + 1][4]}", "in") if i + 1 < len(convs) else Member("classifier", "in")
        )
        members = (Member(f"features.{index}"), Member(f"features.{index + 1}"), consumer)
        groups.append(
            ChannelGroup(
                name,
                base,
                members,
                min=options["min_width"],
                divisor=options["divisor"],
                stage=stage,
                block=block,
                role="conv",
            )
        )
    return ChannelSpace(tuple(groups))


class VGGCifar(nn.Module):
    """Plain conv-BN-ReLU stacks with max-pools, as Network Slimming prunes them."""

    def __init__(self, widths: Mapping[str, int], options: Mapping[str, Any]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = options["in_channels"]
        convs = {index: name for name, _, _, _, index in layout(options)}
        for item in CONFIGS[options["depth"]]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out_ch = widths[convs[len(layers)]]
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, options["num_classes"])
        kaiming_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build(options: Mapping[str, Any], widths: Mapping[str, int]) -> nn.Module:
    """A fresh CIFAR VGG at the given widths."""
    return VGGCifar(widths, options)
