"""ImageNet-style ResNets (18/34/50/101/152 or any blocks per stage) built on torchvision's classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from torchvision.models import resnet as tv_resnet

from widthtune.models.catalog import RESNET
from widthtune.models.initialization import kaiming_init
from widthtune.models.residual import residual_space
from widthtune.models.space import ChannelSpace
from widthtune.models.surgery import resize
from widthtune.models.widths import scaled_width

DEFAULTS = RESNET.defaults
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
BLOCKS = {"basic": tv_resnet.BasicBlock, "bottleneck": tv_resnet.Bottleneck}


def architecture(options: Mapping[str, Any]) -> tuple[str, tuple[int, ...]]:
    """Block kind and blocks per stage, from `depth` or from explicit `layers` (e.g. 2-2-2-2)."""
    if options["layers"] is not None:
        try:
            layers = tuple(int(n) for n in str(options["layers"]).replace("x", "-").split("-"))
        except ValueError:
            raise ValueError(
                f"resnet: layers={options['layers']!r}; write blocks per stage like 2-2-2-2"
            ) from None
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"resnet: layers={options['layers']!r}; give 4 positive counts like 3-4-6-3")
        kind = options["block"] or "basic"
    else:
        if options["depth"] not in DEPTHS:
            raise ValueError(
                f"resnet: depth={options['depth']!r}; choose one of 18, 34, 50, 101, 152 or set layers"
            )
        kind, layers = DEPTHS[options["depth"]]
        kind = options["block"] or kind
    if kind not in BLOCKS:
        raise ValueError(f"resnet: block={kind!r}; choose basic or bottleneck")
    return kind, layers


def _base(width: int, options: Mapping[str, Any]) -> int:
    return scaled_width(width, options["width"], options["divisor"])


def channel_space(options: Mapping[str, Any]) -> ChannelSpace:
    """Stage streams and block-inner groups; bottlenecks have a separate stem and two inner groups."""
    kind, layers = architecture(options)
    expansion = BLOCKS[kind].expansion
    mids = [_base(64 * 2**s, options) for s in range(4)]
    return residual_space(
        blocks=layers,
        mids=mids,
        streams=[_base(64 * 2**s * expansion, options) for s in range(4)],
        stem=None if expansion == 1 else _base(64, options),
        convs_per_block=2 if kind == "basic" else 3,
        projection=True,
        min_width=options["min_width"],
        divisor=options["divisor"],
    )


def init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """torchvision's ResNet initialisation, re-applied after surgery so every resized layer is drawn alike."""
    kaiming_init(model)
    if zero_init_residual:
        for module in model.modules():
            if isinstance(module, tv_resnet.Bottleneck):
                nn.init.zeros_(module.bn3.weight)
            elif isinstance(module, tv_resnet.BasicBlock):
                nn.init.zeros_(module.bn2.weight)


def build(options: Mapping[str, Any], widths: Mapping[str, int]) -> nn.Module:
    """torchvision's ResNet, resized to the widths."""
    kind, layers = architecture(options)
    model = tv_resnet.ResNet(BLOCKS[kind], list(layers), num_classes=options["num_classes"])
    if options["in_channels"] != 3:
        model.conv1 = nn.Conv2d(options["in_channels"], 64, 7, 2, 3, bias=False)
    resize(model, channel_space({**options, "width": 1.0, "divisor": 1, "min_width": 1}), widths)
    init_weights(model, options["zero_init_residual"])
    return model
