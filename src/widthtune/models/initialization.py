"""The initialisation torchvision's conv nets share, applied after construction or surgery."""

from __future__ import annotations

import torch
from torch import nn


def kaiming_init(model: nn.Module, linear_std: float | None = None) -> None:
    """Kaiming-normal fan-out convs, unit BN; linears keep PyTorch's default, or N(0, std) with zero bias."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is None:
                module.reset_parameters()
            else:
                nn.init.normal_(module.weight, 0, linear_std)
                nn.init.zeros_(module.bias)


def fill_bn_gamma(model: nn.Module, value: float) -> None:
    """Every BN scale at `value` (Network Slimming's models start their gammas at 0.5, sparse or from scratch)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
                module.weight.fill_(value)
