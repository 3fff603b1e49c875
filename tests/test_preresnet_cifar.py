"""The CIFAR PreResNet family: PreResNet-164's figures, exact costs, channel selections that slimming prunes."""

import random

import pytest
import torch

from model_checks import assert_cost_exact, randomize_norms
from widthtune.models import SpecError, Widths, channel_space, materialize
from widthtune.models.cost import CostModel
from widthtune.models.inherit import inherit_weights, kept_widths, mask_channels
from widthtune.trainables import slimming

SMALL = "preresnet_cifar:depth=20,resolution=16"


def selected_from(space):
    """Each selection group -> the group it selects from (the one that lists the selection as a reader)."""
    readers = {m.path: g.name for g in space for m in g.members if m.kind == "in"}
    return {g.name: readers[g.members[0].path] for g in space if g.role == "select"}


def test_preresnet164_reproduces_the_reference_figures():
    # Network Slimming's PreResNet-164 on CIFAR-10: 1.70M parameters
    cost = CostModel.from_spec("preresnet_cifar:depth=164").base()
    assert round(cost.params / 1e6, 2) == 1.70
    assert round(cost.macs / 1e6, 1) == 247.6
    space = channel_space("preresnet_cifar:depth=164")
    assert len([g for g in space if g.role == "select"]) == 3 * 18 + 1
    assert space["stage2.stream"].base == 128 and space["stage2.block1.select"].base == 64


@pytest.mark.parametrize("select", [True, False])
@pytest.mark.parametrize(("low", "high"), [(0.3, 0.9), (1.1, 1.9)], ids=["shrunk", "grown"])
def test_random_widths_cost_exactly(select, low, high):
    spec = f"{SMALL},select={str(select).lower()}"
    cost_model = CostModel.from_spec(spec)
    space = cost_model.space
    rng = random.Random(low)
    raw = {g.name: max(1, round(g.base * rng.uniform(low, high))) for g in space}
    for name, source in selected_from(space).items():
        raw[name] = min(raw[name], raw[source])  # a selection takes at most the channels it reads
    widths = Widths.from_mapping(space, raw)
    assert_cost_exact(spec, widths, cost_model)


def test_without_selections_each_bn_joins_the_stream_it_reads():
    space = channel_space(f"{SMALL},select=false")
    assert not [g for g in space if g.role == "select"]
    assert {"layer2.1.bn1", "layer3.0.bn1"} <= {m.path for m in space["stage2.stream"].members}


def test_a_selection_wider_than_its_stream_is_refused_naming_both():
    space = channel_space(SMALL)
    widths = {**Widths.base(space).as_dict(), "stage1.stream": 32, "stage1.block2.select": 40}
    with pytest.raises(ValueError, match=r"stage1.block2.select is 40 .* has 32 channels"):
        materialize(SMALL, Widths.from_mapping(space, widths))


@pytest.mark.parametrize("prune_streams", [False, True])
def test_pruned_selections_inherit_exactly(prune_streams):
    space = channel_space(SMALL)
    generator = torch.Generator().manual_seed(1)
    original = randomize_norms(materialize(SMALL, seed=0), seed=1)

    def some(channels, share=0.6):
        order = torch.randperm(len(channels), generator=generator).tolist()
        return sorted(channels[i] for i in order[: max(1, int(len(channels) * share))])

    kept = {g.name: some(list(range(g.base))) for g in space if g.role != "select"}
    if not prune_streams:
        kept.update({g.name: list(range(g.base)) for g in space if g.role in ("stream", "stem")})
    for name, source in selected_from(space).items():
        kept[name] = some(kept[source])  # a block reads a subset of what its stream keeps
    small = materialize(SMALL, kept_widths(space, kept))
    small.load_state_dict(inherit_weights(original.eval(), space, kept))
    x = torch.randn(2, 3, 16, 16, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(
            small.eval()(x), mask_channels(original, space, kept)(x), rtol=1e-4, atol=1e-4
        )


def test_a_selection_of_a_pruned_stream_channel_is_refused():
    space = channel_space(SMALL)
    kept = {"stage1.stream": list(range(1, 64)), "stage1.block2.select": [0, 1, 2]}
    with pytest.raises(ValueError, match=r"layer1\.1\.select: selects channels \[0\]"):
        inherit_weights(materialize(SMALL), space, kept)


def test_slimming_scores_each_selection_by_the_bn_behind_it():
    space = channel_space(SMALL)
    model = materialize(SMALL, seed=0)
    scores = slimming.bn_scores(model, space)
    assert "stage1.block2.select" in scores and "head.select" in scores
    assert "stage1.stream" not in scores  # no BN writes a pre-activation stream: it keeps its width
    bn = model.get_submodule("layer1.1.bn1")
    torch.testing.assert_close(scores["stage1.block2.select"], bn.weight.detach().abs())


@pytest.mark.parametrize(
    ("spec", "message"), [("preresnet_cifar:depth=21", "9n\\+2"), ("preresnet_cifar:depth=2", "9n\\+2")]
)
def test_bad_depth_names_what_is_allowed(spec, message):
    with pytest.raises(SpecError, match=message):
        channel_space(spec)
