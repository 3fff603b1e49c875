"""Network Slimming: global BN-gamma thresholding to a ratio or a cost, coupled streams, sparsity on `shapes`."""

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from widthtune.models.cost import CostModel
from widthtune.models.inherit import kept_widths, mask_channels
from widthtune.models.registry import canonical_spec, channel_space, materialize
from widthtune.models.widths import smallest_width
from widthtune.trainables import slimming
from widthtune.trainables.task import Task
from widthtune.training import DataSpec, TrainConfig, load_dataset

VGG = "vgg_cifar:depth=11,width=0.25,resolution=16"
RESNET_C = "resnet_cifar:depth=8,resolution=16,shortcut=C"
RESNET_A = "resnet_cifar:depth=8,resolution=16,shortcut=A"
RECIPE = TrainConfig(epochs=3, batch_size=64, lr=0.1, device="cpu")


def random_scores(space, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {group.name: torch.rand(group.base, generator=generator) for group in space}


@pytest.fixture(scope="module")
def shapes():
    return load_dataset(DataSpec(name="shapes", size=600, resolution=16))


def make_task(spec, data, **params):
    cost_model = CostModel.from_spec(spec)
    return Task(
        model=canonical_spec(spec),
        data=data,
        train=RECIPE,
        cost_model=cost_model,
        cost_target=None,
        params=params,
        seed=0,
    )


@pytest.mark.parametrize("ratio", [0.1, 0.37, 0.5, 0.7])
def test_ratio_removes_exactly_that_share_of_channels(ratio):
    space = channel_space(VGG)
    chosen = slimming.prune_to_ratio(space, random_scores(space), ratio)
    total = sum(g.base for g in space)
    assert chosen.prunable == total
    assert sum(g.base - chosen.widths[g.name] for g in space) == round(ratio * total)
    assert all(len(chosen.kept[g.name]) == chosen.widths[g.name] for g in space)


def test_global_threshold_separates_pruned_from_kept_channels():
    space = channel_space(VGG)
    scores = random_scores(space, seed=1)
    chosen = slimming.prune_to_ratio(space, scores, 0.6)
    for group in space:
        kept = set(chosen.kept[group.name])
        pruned = [scores[group.name][i] for i in range(group.base) if i not in kept]
        assert all(s <= chosen.threshold for s in pruned)
        if chosen.widths[group.name] > smallest_width(group):
            assert all(scores[group.name][i] > chosen.threshold for i in kept)


def test_group_floors_hold_and_the_count_stays_exact():
    space = channel_space(VGG + ",min_width=8")
    scores = random_scores(space, seed=2)
    scores["conv1"] = scores["conv1"] * 0.01  # the threshold would empty conv1 without its floor
    chosen = slimming.prune_to_ratio(space, scores, 0.9)
    assert chosen.widths["conv1"] == 8
    assert min(chosen.widths.values) >= 8
    assert chosen.pruned == round(0.9 * sum(g.base for g in space))


def test_no_group_ever_reaches_zero_channels():
    space = channel_space(VGG)
    chosen = slimming.prune_to_ratio(space, random_scores(space), 0.99)
    assert min(chosen.widths.values) == 1


def test_divisor_rounding_keeps_the_top_scored_channels():
    space = channel_space(VGG + ",divisor=8")
    scores = random_scores(space, seed=3)
    chosen = slimming.prune_to_ratio(space, scores, 0.5)
    for group in space:
        width = chosen.widths[group.name]
        assert width % 8 == 0
        best = torch.sort(scores[group.name], descending=True).indices[:width]
        assert chosen.kept[group.name] == tuple(sorted(best.tolist()))


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_cost_target_is_met_within_half_a_percent(fraction):
    space = channel_space(VGG)
    cost_model = CostModel.from_spec(VGG)
    target = fraction * cost_model.base().macs
    chosen = slimming.prune_to_cost(space, random_scores(space, seed=4), cost_model, target)
    cost = cost_model.cost(chosen.widths)
    assert abs(cost - target) <= 0.005 * target


def test_unreachable_cost_target_says_what_is_reachable():
    space = channel_space(VGG)
    with pytest.raises(ValueError, match=r"cost_target: .* is below"):
        slimming.prune_to_cost(space, random_scores(space), CostModel.from_spec(VGG), 10.0)


def test_stream_score_is_the_mean_gamma_over_its_bns():
    space = channel_space(RESNET_C)
    model = materialize(RESNET_C, seed=0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.normal_()
    scores = slimming.bn_scores(model, space)
    bns = ["layer2.0.bn2", "layer2.0.downsample.1"]
    expected = torch.stack([model.get_submodule(p).weight.detach().abs() for p in bns]).mean(0)
    torch.testing.assert_close(scores["stage2.stream"], expected)


def test_sparsity_training_prunes_non_uniformly(shapes):
    # 27 SGD steps move gammas little on their own (they stay near 0.5 at lam=0); lam=0.1 makes L1 visible
    sparse = slimming.search(make_task(VGG, shapes, lam=0.1, ratio=0.5))
    ratios = sparse.widths.ratio_to_base().values()
    assert max(ratios) - min(ratios) > 0.3
    assert sparse.info["threshold"] < 0.25  # L1 pulled half the gammas below half their start (0.5)
    assert sparse.info["pruned_channels"] == round(0.5 * sparse.info["prunable_channels"])
    macs = CostModel.from_spec(VGG).base().macs
    assert sparse.search_flops == 6 * macs * 3 * len(shapes.train_y)
    assert sparse.match_target is False
    json.dumps(dict(sparse.info))
    small = materialize(VGG, sparse.widths)
    small.load_state_dict(sparse.weights, strict=True)


def test_resnet_streams_stay_coupled_and_inherit_exactly(shapes):
    task = make_task(RESNET_C, shapes, lam=0.05, ratio=0.5, sparsity_epochs=1)
    found = slimming.search(task)
    space = task.space
    assert kept_widths(space, found.info["kept"]) == found.widths
    for group in space:
        width = found.widths[group.name]
        for member in group.members:
            weight = found.weights[f"{member.path}.weight"]
            assert weight.shape[1 if member.kind == "in" else 0] == width
    small = materialize(RESNET_C, found.widths)
    small.load_state_dict(found.weights, strict=True)
    # the masked original needs the sparsity-trained weights: retrain the same way (same seeds) and mask
    original = materialize(RESNET_C, seed=task.seed)
    slimming.sparsity_train(original, task, 0.05, 0.5, 1)
    masked = mask_channels(original.cpu().eval(), space, found.info["kept"])
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(shapes.test_x[:16]), masked(shapes.test_x[:16]))


def test_option_a_streams_stay_whole(shapes):
    found = slimming.search(make_task(RESNET_A, shapes, lam=0.05, ratio=0.5, sparsity_epochs=1))
    space = channel_space(RESNET_A)
    assert sorted(found.info["fixed_groups"]) == ["stage1.stream", "stage2.stream", "stage3.stream"]
    for group in space:
        assert (found.widths[group.name] == group.base) == (group.role == "stream")
    materialize(RESNET_A, found.widths).load_state_dict(found.weights, strict=True)


def test_cost_mode_meets_the_task_target(shapes):
    task = make_task(VGG, shapes, lam=0.1, sparsity_epochs=1)
    task = replace(task, cost_target=0.5 * task.cost_model.base().macs)
    found = slimming.search(task)
    assert found.info["prune"] == "cost"
    assert -0.005 <= found.info["cost_error"] <= 0


def test_defaults_follow_the_family(shapes):
    assert slimming.resolve_params(make_task(VGG, shapes))["lam"] == 1e-4
    assert slimming.resolve_params(make_task(VGG, shapes))["ratio"] == 0.7
    params = slimming.resolve_params(make_task(RESNET_C, shapes))
    assert (params["lam"], params["ratio"], params["prune"]) == (1e-5, 0.4, "ratio")
    assert params["sparsity_epochs"] == RECIPE.epochs


def test_cost_mode_without_a_target_is_an_error(shapes):
    with pytest.raises(ValueError, match=r"method\.prune: 'cost' needs a cost target"):
        slimming.resolve_params(make_task(VGG, shapes, prune="cost"))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ratio": 1.2}, r"method.ratio: 1.2 is not allowed; choose a number in \(0, 1\)"),
        ({"ratio": 0}, "method.ratio: 0 is not allowed"),
        ({"lam": -1e-4}, "method.lam: -0.0001 is not allowed"),
        ({"lam": "big"}, "method.lam: 'big' is not allowed"),
        ({"gamma_init": 0}, "method.gamma_init: 0 is not allowed"),
        ({"sparsity_epochs": 0}, "method.sparsity_epochs: 0 is not allowed"),
        ({"sparsity_epochs": 2.5}, "method.sparsity_epochs: 2.5 is not allowed"),
        ({"prune": "magic"}, "method.prune: 'magic' is not allowed; choose one of: auto, ratio, cost"),
    ],
)
def test_bad_params_name_the_field(params, message):
    with pytest.raises(ValueError, match=message):
        slimming.check(params)


def test_method_is_registered_with_plain_defaults():
    assert slimming.METHOD.name == "slimming"
    assert set(slimming.METHOD.defaults) == {
        "lam",
        "gamma_init",
        "sparsity_epochs",
        "ratio",
        "prune",
        "scratch_gamma",
    }
    slimming.check(slimming.DEFAULTS)


def test_ratio_counts_bn_channels_as_the_reference_does_on_a_residual_net(shapes):
    # resnet_cifar depth 8, option C, one block per stage: stream 1 has the stem BN and the block's last BN, the
    # others that BN and the projection's; a `mid` group has one
    task = make_task(RESNET_C, shapes, lam=0.05, ratio=0.4, sparsity_epochs=1)
    found = slimming.search(task)
    model = materialize(RESNET_C, seed=0)
    layers = {name: len(bns) for name, bns in slimming.bn_members(model, task.space).items()}
    assert layers["stage1.stream"] == layers["stage2.stream"] == 2 and layers["stage1.block1.mid"] == 1
    total = sum(task.space[name].base * count for name, count in layers.items())
    assert total > sum(task.space[name].base for name in layers)  # BN channels, not groups
    removed = sum((task.space[name].base - found.widths[name]) * count for name, count in layers.items())
    assert found.info["prunable_bn_channels"] == total and found.info["pruned_bn_channels"] == removed
    assert abs(removed - round(0.4 * total)) <= max(layers.values()) // 2  # nearest whole channel
    assert found.info["bn_channel_ratio"] == pytest.approx(removed / total)


def test_bn_channel_count_weighs_each_removal_by_its_bn_layers():
    space = channel_space(RESNET_C)
    scores = random_scores(space)
    layers = dict.fromkeys(scores, 1) | {"stage1.stream": 3, "stage2.stream": 3, "stage3.stream": 3}
    by_groups = slimming.prune_to_ratio(space, scores, 0.3)
    by_bns = slimming.prune_to_ratio(space, scores, 0.3, layers)
    total = sum(space[n].base * layers[n] for n in scores)
    removed = sum((space[n].base - by_bns.widths[n]) * layers[n] for n in scores)
    assert abs(removed - round(0.3 * total)) <= 1
    assert by_groups.widths != by_bns.widths


def test_scratch_models_start_bn_gamma_at_the_sparsity_runs_value(shapes):
    from widthtune.trainables.adapter import find_widths, initial_model
    from widthtune.trainables.retraining import Retraining

    task = make_task(VGG, shapes, lam=0.01, ratio=0.5, sparsity_epochs=1, gamma_init=0.3)
    found = find_widths(task, "slimming")
    assert found.bn_gamma_init == 0.3
    scratch = initial_model(task.model, found, Retraining("scratch-e"), "slimming", seed=1)
    gammas = torch.cat([m.weight.detach() for m in scratch.modules() if isinstance(m, nn.BatchNorm2d)])
    assert torch.all(gammas == 0.3)
    tuned = initial_model(task.model, found, Retraining("finetune"), "slimming", seed=1)
    torch.testing.assert_close(tuned.state_dict(), dict(found.weights))  # fine-tuning keeps its weights
    plain = find_widths(replace(task, params={**task.params, "scratch_gamma": False}), "slimming")
    default = initial_model(task.model, plain, Retraining("scratch-e"), "slimming", seed=1)
    assert all(torch.all(m.weight == 1) for m in default.modules() if isinstance(m, nn.BatchNorm2d))
