"""The arithmetic cost model equals FlopCounterMode and parameters() on materialised models of any widths."""

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from widthtune.models import Widths, input_shape, materialize
from widthtune.models.cost import CostModel

FAMILY_SPECS = [
    "resnet_cifar:depth=20,shortcut=C",
    "resnet_cifar:depth=14,shortcut=A",
    "vgg_cifar:depth=11",
    "vgg_cifar:depth=16,width=0.5",
    "mobilenet_v2:stem=cifar,width=0.5",
    "mobilenet_v2:stem=imagenet,resolution=96",
    "resnet:depth=18,resolution=64",
    "resnet:depth=50,resolution=64",
    "resnet:layers=1-1-2-1,block=bottleneck,resolution=64",
]
TORCHVISION_SPECS = [
    "torchvision:resnet18,resolution=64",
    "torchvision:mobilenet_v2,resolution=64",
    "torchvision:regnet_x_400mf,resolution=64",
    "torchvision:efficientnet_b0,resolution=64",
    "torchvision:convnext_tiny,resolution=64",
]


def random_widths(space, rng: random.Random, low: float, high: float) -> Widths:
    return Widths.from_mapping(space, {g.name: g.base * rng.uniform(low, high) for g in space}, round=True)


def traced_macs(model: nn.Module, shape) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(shape))
    return counter.get_total_flops() // 2


def counted_lwdna_extras(model: nn.Module, shape) -> int:
    """Independent count: 2 per BN output element + 1 per ReLU output element, per image."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        per_image = output.numel() // output.shape[0]
        total += 2 * per_image if isinstance(module, nn.BatchNorm2d) else per_image

    hooks = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d | nn.ReLU | nn.ReLU6)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(shape))
    for h in hooks:
        h.remove()
    return total


@pytest.mark.parametrize("spec", FAMILY_SPECS + TORCHVISION_SPECS)
@pytest.mark.parametrize(
    ("low", "high"), [(0.25, 0.9), (1.1, 1.9), (0.3, 1.8)], ids=["shrunk", "grown", "mixed"]
)
def test_cost_model_is_exact_for_random_widths(spec, low, high):
    cost_model = CostModel.from_spec(spec)
    widths = random_widths(cost_model.space, random.Random(f"{spec}{low}"), low, high)
    model = materialize(spec, widths, seed=0)
    cost = cost_model.evaluate(widths)
    assert cost.macs == traced_macs(model, input_shape(spec))
    assert cost.flops == 2 * cost.macs
    assert cost.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "spec",
    [
        "resnet_cifar:depth=20,shortcut=C",
        "resnet_cifar:depth=8,shortcut=A",
        "vgg_cifar:depth=11",
        "mobilenet_v2:width=0.5",
        "torchvision:resnet18,resolution=64",
    ],
)
def test_lwdna_convention_counts_bn_and_relu_elements(spec):
    cost_model = CostModel.from_spec(spec)
    widths = random_widths(cost_model.space, random.Random(spec), 0.3, 1.7)
    model = materialize(spec, widths)
    cost = cost_model.evaluate(widths)
    assert cost.lwdna - cost.macs == counted_lwdna_extras(model, input_shape(spec))


def test_batch_evaluation_matches_single_vectors():
    cost_model = CostModel.from_spec("resnet_cifar:depth=20")
    rng = random.Random(0)
    vectors = [random_widths(cost_model.space, rng, 0.2, 2.0) for _ in range(5)]
    batch = np.asarray([w.values for w in vectors])
    assert np.allclose(cost_model.cost(batch), [cost_model.evaluate(w).macs for w in vectors])
    assert np.allclose(cost_model.cost(batch, "params"), [cost_model.evaluate(w).params for w in vectors])


def test_unknown_convention_is_rejected():
    cost_model = CostModel.from_spec("resnet_cifar:depth=8")
    with pytest.raises(ValueError, match="macs, flops, lwdna, params"):
        cost_model.cost(Widths.base(cost_model.space), "gmacs")


@pytest.mark.parametrize("convention", ["macs", "flops", "lwdna", "params"])
def test_cost_tensor_equals_the_arithmetic_cost_and_its_gradient_is_the_cost_per_channel(convention):
    cost_model = CostModel.from_spec("resnet:depth=18,resolution=32,num_classes=10")
    rng = np.random.default_rng(0)
    values = np.asarray([g.base * rng.uniform(0.3, 1.0) for g in cost_model.space]).round()
    widths = torch.tensor(values, requires_grad=True)
    total = cost_model.cost_tensor(widths, convention)
    assert total.item() == pytest.approx(float(cost_model.cost(values, convention)), rel=1e-12)
    total.backward()
    group = 3
    step = values.copy()
    step[group] += 1
    difference = float(cost_model.cost(step, convention) - cost_model.cost(values, convention))
    # cost is bilinear in two widths, so one channel more differs from the slope by the w_g^2 term only
    assert widths.grad[group].item() == pytest.approx(difference, rel=0.05)
