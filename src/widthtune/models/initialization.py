"""The initialisation torchvision's conv nets share, applied after construction or surgery."""

from __future__ import annotations

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
