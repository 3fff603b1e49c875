"""The model families a spec can name, with their options and defaults: readable without importing torch.

`widthtune models` and `widthtune --help` answer from here in a fraction of a second; the registry pairs each
entry with the code that builds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# Options that describe the input or the space, never passed to a generic model's factory.
INPUT_OPTIONS: Mapping[str, Any] = MappingProxyType(
    {"resolution": 224, "in_channels": 3, "divisor": 1, "min_width": 1}
)


@dataclass(frozen=True)
class FamilyEntry:
    """One family's name, one-line summary and options with their defaults (open: a factory takes more)."""

    name: str
    summary: str
    defaults: Mapping[str, Any]
    open_options: bool = False


def _entry(name: str, summary: str, defaults: Mapping[str, Any], open_options: bool = False) -> FamilyEntry:
    return FamilyEntry(name, summary, MappingProxyType(dict(defaults)), open_options)


RESNET_CIFAR = _entry(
    "resnet_cifar",
    "CIFAR ResNet, depth 6n+2, shortcut A (zero-pad) or C (1x1 conv + BN)",
    {
        "depth": 56,
        "width": 1.0,
        "shortcut": "C",
        "num_classes": 10,
        "resolution": 32,
        "in_channels": 3,
        "divisor": 1,
        "min_width": 1,
    },
)
VGG_CIFAR = _entry(
    "vgg_cifar",
    "CIFAR VGG-11/13/16/19 (Network Slimming configs)",
    {
        "depth": 19,
        "width": 1.0,
        "num_classes": 10,
        "resolution": 32,
        "in_channels": 3,
        "divisor": 1,
        "min_width": 1,
    },
)
DENSENET_CIFAR = _entry(
    "densenet_cifar",
    "CIFAR DenseNet, depth 3n+4 (6n+4 with bottleneck): DenseNet-40 k=12, DenseNet-BC-100 (Network Slimming)",
    {
        "depth": 40,
        "growth": 12,
        "bottleneck": False,
        "compression": 1.0,
        "select": False,
        "width": 1.0,
        "num_classes": 10,
        "resolution": 32,
        "in_channels": 3,
        "divisor": 1,
        "min_width": 1,
    },
)
PRERESNET_CIFAR = _entry(
    "preresnet_cifar",
    "CIFAR pre-activation bottleneck ResNet, depth 9n+2 (PreResNet-164), with Network Slimming's channel selections",
    {
        "depth": 164,
        "width": 1.0,
        "select": True,
        "num_classes": 10,
        "resolution": 32,
        "in_channels": 3,
        "divisor": 1,
        "min_width": 1,
    },
)
MOBILENET_V2 = _entry(
    "mobilenet_v2",
    "MobileNetV2 with stem=cifar (stride 1) or stem=imagenet",
    {
        "stem": "cifar",
        "width": 1.0,
        "depth_mult": 1.0,
        "num_classes": 10,
        "resolution": 32,
        "in_channels": 3,
        "dropout": 0.2,
        "divisor": 8,
        "min_width": 8,
    },
)
RESNET = _entry(
    "resnet",
    "ImageNet ResNet-18/34/50/101/152 or any layers=a-b-c-d (torchvision classes)",
    {
        "depth": 50,
        "layers": None,
        "block": None,
        "width": 1.0,
        "num_classes": 1000,
        "resolution": 224,
        "in_channels": 3,
        "zero_init_residual": False,
        "divisor": 1,
        "min_width": 1,
    },
)
REPVGG = _entry(
    "repvgg",
    "RepVGG-A0..A2, B0..B3 (3x3 + 1x1 + identity branches; priced merged) with stem=imagenet or cifar",
    {
        "variant": "A0",
        "stem": "imagenet",
        "width": 1.0,
        "num_classes": 1000,
        "resolution": 224,
        "in_channels": 3,
        "divisor": 1,
        "min_width": 1,
    },
)
TORCHVISION = _entry(
    "torchvision", "any torchvision classifier: torchvision:NAME", INPUT_OPTIONS, open_options=True
)
PYTHON = _entry(
    "python",
    "your own nn.Module class or factory (runs its code): python:FILE.py:CALLABLE",
    INPUT_OPTIONS,
    open_options=True,
)

CATALOG: Mapping[str, FamilyEntry] = MappingProxyType(
    {
        entry.name: entry
        for entry in (
            RESNET_CIFAR,
            VGG_CIFAR,
            DENSENET_CIFAR,
            MOBILENET_V2,
            RESNET,
            REPVGG,
            TORCHVISION,
            PYTHON,
        )
    }
)
