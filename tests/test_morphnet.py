"""MorphNet: the gamma-FLOP regulariser by hand on a 3-layer net, its gradient, alive shapes expanded to targets."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from widthtune.models.cost import CostModel
from widthtune.models.match import match_cost
from widthtune.models.registry import channel_space, materialize
from widthtune.models.space import ChannelGroup, ChannelSpace, Member
from widthtune.models.widths import Widths
from widthtune.platform.config import ConfigError, validate_config
from widthtune.trainables import morphnet
from widthtune.trainables.adapter import find_widths

SPEC = "resnet_cifar:depth=8,resolution=8"


def three_layers():
    """conv(3->4, 3x3) BN ReLU, conv(4->6, 3x3, stride 2) BN ReLU, pool, linear(6->2) on 8x8 images."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    )
    space = ChannelSpace(
        (
            ChannelGroup("g1", 4, (Member("0"), Member("1"), Member("3", "in"))),
            ChannelGroup("g2", 6, (Member("3"), Member("4"), Member("8", "in"))),
        )
    )
    return model, space, CostModel.trace(model, space, torch.zeros(1, 3, 8, 8))


def test_regulariser_equals_a_hand_computation_and_its_gradient_autograds():
    model, space, cost_model = three_layers()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -0.005, 0.2, 0.001]))  # two of four alive
        model[4].weight.copy_(torch.tensor([0.3, 0.0, -0.4, 0.02, 0.009, 1.0]))  # four of six alive
    regularizer = morphnet.Regularizer.of(model, cost_model, Widths.base(space), "flops", 1e-2)
    assert regularizer.alive().tolist() == [2, 4]
    g1, g2 = model[1].weight.abs().sum().item(), model[4].weight.abs().sum().item()
    conv1 = 2 * 3 * 3 * 8 * 8  # FLOPs per (in, out) channel pair: 2 k_h k_w H_out W_out
    conv2 = 2 * 3 * 3 * 4 * 4
    fc = 2 * 1
    hand = conv1 * (3 * g1 + 2 * 0) + conv2 * (2 * g2 + 4 * g1) + fc * (4 * 0 + 2 * g2)
    value = regularizer()
    assert float(value.detach()) == pytest.approx(hand, rel=1e-6)  # float32 gammas
    value.backward()
    sign1, sign2 = model[1].weight.detach().sign(), model[4].weight.detach().sign()
    assert torch.allclose(model[1].weight.grad, (conv1 * 3 + conv2 * 4) * sign1)
    assert torch.allclose(model[4].weight.grad, (conv2 * 2 + fc * 2) * sign2)


def test_a_residual_stream_reads_the_largest_gamma_over_its_bns():
    spec = "resnet_cifar:depth=8,resolution=8"
    model = materialize(spec, seed=0)
    space = channel_space(spec)
    stream = space["stage1.stream"]
    bns = [m.path for m in stream.members if m.kind == "out" and m.path.endswith(("bn1", "bn2"))]
    modules = dict(model.named_modules())
    with torch.no_grad():
        for path in bns:
            modules[path].weight.zero_()
        modules[bns[0]].weight[:5] = 0.5  # alive in the stem's BN only
        modules[bns[1]].weight[3:7] = -0.5  # and in the block's last BN
    regularizer = morphnet.Regularizer.of(model, CostModel.from_spec(spec), Widths.base(space), "macs", 1e-2)
    assert regularizer.alive()[space.index("stage1.stream")] == 7


@pytest.fixture(scope="module")
def task(tiny_task):
    return replace(tiny_task, train=replace(tiny_task.train, device="cpu"))


@pytest.mark.parametrize("ratio", [0.3, 0.5, 1.0])
def test_the_alive_shape_expands_to_the_target_within_half_a_percent(ratio):
    model = materialize(SPEC, seed=0)
    space, cost_model = channel_space(SPEC), CostModel.from_spec(SPEC)
    modules = dict(model.named_modules())
    with torch.no_grad():  # kill most of stage 3's inner channels and a quarter of stage 2's stream
        modules["layer3.0.bn1"].weight[8:] = 1e-3
        for member in space["stage2.stream"].members:
            if member.kind == "out" and member.path.endswith(("bn2", "downsample.1")):
                modules[member.path].weight[24:] = -1e-3
    regularizer = morphnet.Regularizer.of(model, cost_model, Widths.base(space), "macs", 1e-2)
    shape = morphnet.alive_shape(space, regularizer.alive())
    assert shape["stage3.block1.mid"] == 8 and shape["stage2.stream"] == 24 and shape["stage1.stream"] == 16
    target = ratio * cost_model.base().macs
    matched = match_cost(shape, target, cost_model)
    assert abs(cost_model.cost(matched.widths) - target) <= 0.005 * target
    assert matched.widths["stage3.block1.mid"] < matched.widths["stage3.stream"]  # the shape survives


@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_a_search_lands_within_half_a_percent_of_the_target(task, ratio, one_thread):
    target = ratio * task.cost_model.base().macs
    found = find_widths(replace(task, cost_target=target, params={"strength": 20.0, "lr": 0.2}), "morphnet")
    assert abs(task.cost_model.cost(found.widths) - target) <= 0.005 * target
    (round_,) = found.info["rounds"]
    assert set(round_["alive"]) == set(task.space.names) and round_["regularizer"] > 0
    assert found.search_flops > 0 and found.multiplier == 1.0  # matched by the method itself


def test_several_rounds_learn_again_at_the_expanded_widths(task, one_thread):
    found = find_widths(replace(task, params={"strength": 20.0, "lr": 0.2, "rounds": 2}), "morphnet")
    assert len(found.info["rounds"]) == 2
    assert abs(task.cost_model.cost(found.widths) - task.cost_target) <= 0.005 * task.cost_target


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"strength": -1}, r"method.strength: -1 is not allowed; choose a number >= 0"),
        ({"threshold": 0}, "method.threshold: 0 is not allowed"),
        ({"rounds": 0}, "method.rounds: 0 is not allowed; choose an integer >= 1"),
        ({"lr": "fast"}, "method.lr: 'fast' is not allowed"),
        ({"epochs": 1.5}, "method.epochs: 1.5 is not allowed"),
    ],
)
def test_bad_hyperparameters_are_named(setting, message, tmp_path):
    raw = {"name": "m", "model": SPEC, "method": {"name": "morphnet", **setting}, "storage": str(tmp_path)}
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)
