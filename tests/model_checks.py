"""Checks the model tests share: a model's arithmetic cost against a real count, and BN layers worth masking."""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from widthtune.models import input_shape, materialize


def assert_cost_exact(spec, widths, cost_model):
    """The cost model's MACs and parameters equal FlopCounterMode's count (/2) and the built model's; returns it."""
    model = materialize(spec, widths, seed=0).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(input_shape(spec)))
    cost = cost_model.evaluate(widths)
    assert cost.macs == counter.get_total_flops() // 2
    assert cost.params == sum(p.numel() for p in model.parameters())
    return model


def randomize_norms(model, seed=0):
    """The model (in eval mode) with BN affines and running statistics far from their defaults."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(torch.randn(shape, generator=generator))
                module.bias.copy_(torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
    return model.eval()
