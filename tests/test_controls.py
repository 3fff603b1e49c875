"""Rethinking's controls: uniform, guided and transferred-guided widths, each at the pruned model's cost."""

import pytest

from widthtune.models.cost import CostModel
from widthtune.models.registry import channel_space
from widthtune.models.widths import Widths
from widthtune.search_spaces.controls import (
    guided_control,
    stage_ratios,
    transferred_guided,
    uniform_control,
)

VGG16 = "vgg_cifar:depth=16,width=0.25"
VGG19 = "vgg_cifar:depth=19,width=0.25"
RESNET = "resnet_cifar:depth=20"
# a Network-Slimming-like VGG-16 profile: later stages keep far fewer channels (Rethinking, Table 3.21)
KEEP_BY_STAGE = {1: 0.9, 2: 0.8, 3: 0.6, 4: 0.3, 5: 0.2}


def pruned(spec, jitter=0.1):
    space = channel_space(spec)
    ratios = {g.name: KEEP_BY_STAGE.get(g.stage, 0.5) * (1 + jitter * (-1) ** (g.block or 0)) for g in space}
    return Widths.from_ratios(space, ratios)


def within_half_a_percent(cost, target):
    return abs(cost - target) <= 0.005 * target


@pytest.mark.parametrize("convention", ["macs", "params"])
def test_uniform_control_matches_the_pruned_cost(convention):
    cost_model = CostModel.from_spec(VGG16)
    target = cost_model.cost(pruned(VGG16), convention)
    match = uniform_control(cost_model.space, cost_model, target, convention)
    assert within_half_a_percent(cost_model.cost(match.widths, convention), target)
    ratios = match.widths.ratio_to_base().values()
    assert max(ratios) - min(ratios) < 0.1  # one multiplier, up to rounding


def test_guided_control_is_stage_constant_at_the_pruned_cost():
    cost_model = CostModel.from_spec(VGG16)
    widths = pruned(VGG16)
    target = cost_model.cost(widths)
    match = guided_control(widths, cost_model, target)
    assert within_half_a_percent(cost_model.cost(match.widths), target)
    space = cost_model.space
    for stage in range(1, 6):
        stage_widths = [match.widths[g.name] for g in space if g.stage == stage]
        assert max(stage_widths) - min(stage_widths) <= 1  # equal up to the rounding refinement
    guided = stage_ratios(match.widths)
    assert guided[1] > guided[2] > guided[3] > guided[4] > guided[5]


def test_stage_ratio_is_channels_kept_over_base_channels():
    widths = pruned(VGG16)
    space = widths.space
    stage3 = [g for g in space if g.stage == 3]
    expected = sum(widths[g.name] for g in stage3) / sum(g.base for g in stage3)
    assert stage_ratios(widths)[3] == pytest.approx(expected)


def test_transferred_guided_applies_vgg16_stages_to_vgg19():
    source = pruned(VGG16)
    cost_model = CostModel.from_spec(VGG19)
    target = cost_model.cost(pruned(VGG19, jitter=0.0))
    match = transferred_guided(source, channel_space(VGG19), cost_model, target)
    assert within_half_a_percent(cost_model.cost(match.widths), target)
    transferred = stage_ratios(match.widths)
    assert transferred[1] > transferred[2] > transferred[3] > transferred[4] > transferred[5]
    source_ratios = stage_ratios(source)
    scale = match.multiplier
    for stage in range(1, 6):
        assert transferred[stage] == pytest.approx(source_ratios[stage] * scale, abs=0.05)


def test_guided_control_on_a_resnet_keeps_each_stages_ratio():
    cost_model = CostModel.from_spec(RESNET)
    space = cost_model.space
    widths = Widths.from_ratios(space, {g.name: 1.0 if g.stage == 1 else 0.5 for g in space})
    target = 0.8 * cost_model.cost(widths)
    match = guided_control(widths, cost_model, target)
    assert within_half_a_percent(cost_model.cost(match.widths), target)
    ratios = stage_ratios(match.widths)
    assert ratios[1] > 1.5 * ratios[2]


def test_transfer_needs_the_same_stage_indices():
    cost_model = CostModel.from_spec(VGG16)
    with pytest.raises(ValueError, match=r"source_widths: the source model has no stage 4, 5"):
        transferred_guided(Widths.base(channel_space(RESNET)), cost_model.space, cost_model, 1e6)


def test_cost_model_of_another_space_is_refused():
    cost_model = CostModel.from_spec(VGG16)
    with pytest.raises(ValueError, match="cost_model"):
        uniform_control(channel_space(VGG19), cost_model, 1e6)
