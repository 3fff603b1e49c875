"""The CIFAR DenseNet family: Network Slimming's DenseNet-40 numbers, its declared groups, exact costs."""

import random

import pytest
import torch

from model_checks import assert_cost_exact, randomize_norms
from widthtune.models import SpecError, Widths, channel_space, input_shape, materialize
from widthtune.models.cost import CostModel
from widthtune.models.dependency import dependency_space
from widthtune.models.inherit import inherit_weights, kept_widths, mask_channels
from widthtune.models.space import Member
from widthtune.platform.config import validate_config
from widthtune.platform.runner import run_experiment
from widthtune.results.store import read_trials
from widthtune.trainables import slimming


def test_densenet40_reproduces_the_reference_figures():
    # DenseNet-40 k=12 on CIFAR-10: 282.9M MACs, 290.1M in LW-DNA's convention (its Table: 0.2901 G), 1.059M params
    cost = CostModel.from_spec("densenet_cifar:depth=40,growth=12,num_classes=10").base()
    assert (round(cost.macs / 1e6, 1), round(cost.lwdna / 1e6, 1), round(cost.params / 1e6, 3)) == (
        282.9,
        290.1,
        1.059,
    )
    assert round(CostModel.from_spec("densenet_cifar:num_classes=100").base().params / 1e6, 3) == 1.100


def test_densenet_bc_100_has_bottlenecks_and_compressed_transitions():
    space = channel_space("densenet_cifar:depth=100,bottleneck=true,compression=0.5")
    assert space["stage1.block16.mid"].base == 48 and space["stage1.block16.growth"].base == 12
    assert space["stage1.transition"].base == (24 + 16 * 12) // 2
    assert (
        round(
            CostModel.from_spec("densenet_cifar:depth=100,bottleneck=true,compression=0.5").base().params
            / 1e6,
            2,
        )
        == 0.77
    )


@pytest.mark.parametrize(
    "spec",
    ["densenet_cifar:depth=10,growth=4", "densenet_cifar:depth=16,growth=4,bottleneck=true,compression=0.5"],
)
def test_declared_groups_are_the_traced_groups(spec):
    own = channel_space(spec)
    traced = dependency_space(materialize(spec), torch.zeros(input_shape(spec)))

    def shape(space):
        index = {g.name: i for i, g in enumerate(space)}
        groups = [(g.base, sorted((m.path, m.kind) for m in g.members)) for g in space]
        concats = sorted((c.path, c.kind, tuple(index[p] for p in c.parts)) for c in space.concats)
        return groups, concats

    assert shape(own) == shape(traced)
    assert Member("dense2.0.bn1") in own["stage1.transition"].members
    second = {(c.path, c.kind): c.parts for c in own.concats}[("dense1.1.conv1", "in")]
    assert second == ("stem", "stage1.block1.growth")


@pytest.mark.parametrize(("low", "high"), [(0.3, 0.9), (1.1, 1.9)], ids=["shrunk", "grown"])
def test_random_widths_cost_exactly(low, high):
    spec = "densenet_cifar:depth=16,growth=6,bottleneck=true,compression=0.5,resolution=16"
    cost_model = CostModel.from_spec(spec)
    rng = random.Random(low)
    widths = Widths.from_mapping(
        cost_model.space, {g.name: g.base * rng.uniform(low, high) for g in cost_model.space}, round=True
    )
    assert_cost_exact(spec, widths, cost_model)


def test_pruned_densenet_inherits_every_concatenated_slice():
    spec = "densenet_cifar:depth=16,growth=6,bottleneck=true,compression=0.5,resolution=16"
    space = channel_space(spec)
    generator = torch.Generator().manual_seed(0)
    original = randomize_norms(materialize(spec, seed=0))
    kept = {
        g.name: sorted(torch.randperm(g.base, generator=generator)[: max(1, g.base // 2)].tolist())
        for g in space
    }
    small = materialize(spec, kept_widths(space, kept))
    small.load_state_dict(inherit_weights(original.eval(), space, kept))
    x = torch.randn(2, 3, 16, 16, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(
            small.eval()(x), mask_channels(original, space, kept)(x), rtol=1e-4, atol=1e-4
        )


SELECTING = "densenet_cifar:depth=16,growth=6,bottleneck=true,compression=0.5,select=true,resolution=16"


def selection_parts(space):
    """Each selecting group -> the groups its selection reads, side by side."""
    reads = {(m.path, m.kind): (g.name,) for g in space for m in g.members}
    reads |= {(c.path, c.kind): c.parts for c in space.concats}
    return {g.name: reads[(g.members[0].path, "in")] for g in space if g.role == "select"}


def test_selections_give_each_reader_its_own_group_at_the_same_cost():
    plain, selecting = "densenet_cifar:depth=40", "densenet_cifar:depth=40,select=true"
    assert CostModel.from_spec(selecting).base() == CostModel.from_spec(plain).base()
    space = channel_space(SELECTING)
    parts = selection_parts(space)
    assert parts["stage1.block2.select"] == ("stem", "stage1.block1.growth")
    assert parts["stage2.block1.select"] == ("stage1.transition",)
    assert len(parts["stage1.transition_select"]) == 1 + 2 and len(parts["head.select"]) == 1 + 2
    assert space["stage1.block2.select"].base == space["stem"].base + 6
    assert {m.path for m in space["stage1.block2.select"].members} == {
        "dense1.1.select",
        "dense1.1.bn1",
        "dense1.1.conv1",
    }
    assert not space.concats or all(c.path.endswith("select") for c in space.concats)  # BNs read selections


@pytest.mark.parametrize(("low", "high"), [(0.3, 0.9), (1.1, 1.9)], ids=["shrunk", "grown"])
def test_random_widths_with_selections_cost_exactly(low, high):
    cost_model = CostModel.from_spec(SELECTING)
    space = cost_model.space
    rng = random.Random(low)
    raw = {g.name: max(1, round(g.base * rng.uniform(low, high))) for g in space}
    for name, parts in selection_parts(space).items():
        raw[name] = min(raw[name], sum(raw[p] for p in parts))  # at most the channels it reads
    assert_cost_exact(SELECTING, Widths.from_mapping(space, raw), cost_model)


def test_pruned_selections_of_concatenated_features_inherit_exactly():
    space = channel_space(SELECTING)
    generator = torch.Generator().manual_seed(2)
    original = randomize_norms(materialize(SELECTING, seed=0))

    def some(channels, share=0.6):
        order = torch.randperm(len(channels), generator=generator).tolist()
        return sorted(channels[i] for i in order[: max(1, int(len(channels) * share))])

    kept = {g.name: some(list(range(g.base))) for g in space if g.role != "select"}
    for name, parts in selection_parts(space).items():
        offsets = [sum(space[q].base for q in parts[:i]) for i in range(len(parts))]
        readable = [o + c for p, o in zip(parts, offsets, strict=True) for c in kept[p]]
        kept[name] = some(readable)  # a reader selects some of the concatenated channels that are kept
    small = materialize(SELECTING, kept_widths(space, kept))
    small.load_state_dict(inherit_weights(original.eval(), space, kept))
    x = torch.randn(2, 3, 16, 16, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(
            small.eval()(x), mask_channels(original, space, kept)(x), rtol=1e-4, atol=1e-4
        )


def test_slimming_scores_each_reader_by_its_own_bn():
    space = channel_space(SELECTING)
    model = materialize(SELECTING, seed=0)
    scores = slimming.bn_scores(model, space)
    torch.testing.assert_close(
        scores["stage1.block2.select"], model.get_submodule("dense1.1.bn1").weight.detach().abs()
    )
    assert "stage1.block1.growth" not in scores  # no BN reads the features but through a selection


def test_without_selections_a_group_scores_the_mean_gamma_over_every_bn_slice_that_sees_it():
    spec = "densenet_cifar:depth=10,growth=4,resolution=16"
    model = randomize_norms(materialize(spec, seed=0))
    scores = slimming.bn_scores(model, channel_space(spec))
    slices = [model.get_submodule(p).weight.detach()[8:12].abs() for p in ("dense1.1.bn1", "trans1.bn")]
    torch.testing.assert_close(scores["stage1.block1.growth"], (slices[0] + slices[1]) / 2)


def test_a_selection_wider_than_the_features_is_refused_naming_it():
    space = channel_space(SELECTING)
    widths = {**Widths.base(space).as_dict(), "stage1.block2.select": space["stage1.block2.select"].base + 1}
    with pytest.raises(ValueError, match=r"densenet_cifar: stage1.block2.select is 19 .* has 18 channels"):
        materialize(SELECTING, Widths.from_mapping(space, widths))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("densenet_cifar:depth=41", "3n\\+4"),
        ("densenet_cifar:depth=42,bottleneck=true", "6n\\+4"),
        ("densenet_cifar:compression=1.5", "compression"),
        ("densenet_cifar:growth=0", "growth"),
    ],
)
def test_bad_options_name_what_is_allowed(spec, message):
    with pytest.raises(SpecError, match=message):
        channel_space(spec)


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_slimming_prunes_a_tiny_densenet_on_digits_fine_tuned_and_from_scratch(tmp_path):
    spec = "densenet_cifar:depth=10,growth=8,select=true"  # as Network Slimming prunes it
    config = {
        "name": "densenet-slimming",
        "kind": "compare",
        "model": spec,
        "data": {"name": "digits", "resolution": 16},
        "train": {"epochs": 4, "batch_size": 32, "lr": 0.1, "schedule": "multistep", "milestones": [3]},
        "methods": [
            {
                "name": "slimming",
                "lam": 0.0001,
                "ratio": 0.4,
                "sparsity_epochs": 4,
                "retrain": {"mode": {"grid": ["finetune", "scratch-e"]}, "finetune_epochs": 2},
            }
        ],
        "storage": str(tmp_path),
        "max_failures": 0,
    }
    directory = run_experiment(validate_config(config), say=lambda line: None)
    rows = read_trials(directory / "results")
    assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    by_mode = {r["retrain"]: r for r in rows if r["label"] == "slimming"}
    assert set(by_mode) == {"finetune", "scratch-e"}
    space = channel_space(f"{spec},resolution=16")
    widths = dict(zip(space.names, by_mode["finetune"]["widths"], strict=True))
    readers = [g for g in space if g.role == "select"]
    assert any(widths[g.name] < g.base for g in readers)  # each reader pruned by its own BN
    assert all(widths[g.name] == g.base for g in space if g.role != "select")  # the features keep their width
    assert by_mode["finetune"]["widths"] == by_mode["scratch-e"]["widths"]
    full = CostModel.from_spec(f"{spec},resolution=16").base().macs
    assert by_mode["finetune"]["macs"] < full
    accuracy = {mode: row["final_test_acc"] for mode, row in by_mode.items()}
    assert min(accuracy.values()) > 0.3, accuracy
