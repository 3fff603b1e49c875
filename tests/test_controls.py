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


# a hand-made pruned VGG-11 (width 0.25: stages 16 | 32 | 64 64 | 128 128 | 128 128): 264 of 688 channels kept
HAND_PRUNED = {
    "conv1": 8,
    "conv2": 16,
    "conv3": 32,
    "conv4": 48,
    "conv5": 64,
    "conv6": 32,
    "conv7": 32,
    "conv8": 32,
}
VGG11 = "vgg_cifar:depth=11,width=0.25,resolution=16"
VGG13 = "vgg_cifar:depth=13,width=0.25,resolution=16"


def control_task(spec, **params):
    from widthtune.models.registry import canonical_spec
    from widthtune.trainables.task import Task
    from widthtune.training import DataSpec, TrainConfig, load_dataset

    base = channel_space(VGG11)
    ratio = {name: 1 - width / base[name].base for name, width in HAND_PRUNED.items()}
    return Task(
        model=canonical_spec(spec),
        data=load_dataset(DataSpec(name="shapes", size=100, resolution=16)),
        train=TrainConfig(epochs=1, batch_size=32, device="cpu"),
        cost_model=CostModel.from_spec(spec),
        cost_target=None,
        params={"source": "l1_filter", "source_params": {"ratio": ratio, "pretrain_epochs": 0}, **params},
    )


def test_channels_protocol_prunes_the_same_share_per_layer_and_per_stage_on_a_hand_made_example():
    from widthtune.trainables import control

    uniform = control.search(control_task(VGG11, kind="uniform"))
    # 264 / 688 = 0.3837 of every layer: 16 -> 6, 32 -> 12, 64 -> 25, 128 -> 49
    assert uniform.widths.as_dict() == {
        "conv1": 6, "conv2": 12, "conv3": 25, "conv4": 25, "conv5": 49, "conv6": 49, "conv7": 49, "conv8": 49,
    }  # fmt: skip
    guided = control.search(control_task(VGG11, kind="guided"))
    # stage averages: 8/16, 16/32, 80/128, 96/256, 64/256
    assert guided.widths.as_dict() == {
        "conv1": 8, "conv2": 16, "conv3": 40, "conv4": 40, "conv5": 48, "conv6": 48, "conv7": 32, "conv8": 32,
    }  # fmt: skip
    assert guided.info["match"] == "channels" and guided.info["multiplier"] == 1.0
    transferred = control.search(control_task(VGG13, kind="guided", source_model=VGG11))
    assert [transferred.widths[f"conv{i}"] for i in range(1, 11)] == [8, 8, 16, 16, 40, 40, 48, 48, 32, 32]


@pytest.mark.parametrize("match", ["params", "macs"])
def test_params_and_macs_protocols_scale_the_control_to_the_pruned_models_share(match):
    from widthtune.trainables import control

    cost_model = CostModel.from_spec(VGG11)
    pruned_widths = Widths.from_mapping(cost_model.space, HAND_PRUNED)
    for kind in ("uniform", "guided"):
        found = control.search(control_task(VGG11, kind=kind, match=match))
        assert within_half_a_percent(
            cost_model.cost(found.widths, match), cost_model.cost(pruned_widths, match)
        )
        assert found.info["match"] == match


def test_the_control_method_defaults_to_the_chapters_protocol_and_checks_match():
    from widthtune.trainables import control

    assert control.DEFAULTS["match"] == "channels"
    with pytest.raises(
        ValueError, match=r"method.match: 'flops' is not allowed; choose one of: channels, params, macs"
    ):
        control.check({"match": "flops"})
