"""L1-norm filter pruning: predefined ratios, top-L1 filters kept, stream scores summed, weights inherited."""

import json

import pytest
import torch
from torch import nn

from model_checks import randomize_norms
from widthtune.models.cost import CostModel
from widthtune.models.inherit import inherit_weights, mask_channels
from widthtune.models.registry import canonical_spec, channel_space, materialize
from widthtune.trainables import l1_filter
from widthtune.trainables.task import Task
from widthtune.training import DataSpec, TrainConfig, load_dataset

VGG = "vgg_cifar:depth=11,width=0.25,resolution=16"
RESNET_C = "resnet_cifar:depth=8,resolution=16,shortcut=C"
RESNET_A = "resnet_cifar:depth=8,resolution=16,shortcut=A"


@pytest.fixture(scope="module")
def shapes():
    return load_dataset(DataSpec(name="shapes", size=600, resolution=16))


def make_task(spec, data, **params):
    return Task(
        model=canonical_spec(spec),
        data=data,
        train=TrainConfig(epochs=3, batch_size=64, lr=0.05, device="cpu"),
        cost_model=CostModel.from_spec(spec),
        cost_target=None,
        params={"pretrain_epochs": 0, **params},
        seed=0,
    )


def test_each_group_keeps_its_top_l1_filters(shapes):
    found = l1_filter.search(make_task(VGG, shapes, ratio=0.5))
    model = materialize(VGG, seed=0)
    for group in channel_space(VGG):
        assert found.widths[group.name] == group.base // 2
        conv = model.get_submodule(group.members[0].path)
        norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
        best = torch.sort(norms, descending=True).indices[: group.base // 2]
        assert found.info["kept"][group.name] == sorted(best.tolist())
    assert found.search_flops == 0 and found.match_target is False
    json.dumps(dict(found.info))


def test_stream_filters_are_ranked_by_the_sum_over_their_convs():
    space = channel_space(RESNET_C)
    model = materialize(RESNET_C, seed=0)
    norms = l1_filter.filter_norms(model, space)
    writers = ["layer2.0.conv2", "layer2.0.downsample.0"]
    expected = sum(model.get_submodule(p).weight.detach().abs().sum(dim=(1, 2, 3)) for p in writers)
    torch.testing.assert_close(norms["stage2.stream"], expected)


def test_pruned_resnet_inherits_exactly_what_the_masked_original_computes(shapes):
    task = make_task(RESNET_C, shapes, ratio=0.4)
    found = l1_filter.search(task)
    kept = found.info["kept"]
    original = materialize(RESNET_C, seed=0)  # what was pruned: no pretraining, same seed
    torch.testing.assert_close(dict(found.weights), inherit_weights(original, task.space, kept))
    with torch.no_grad():  # BN statistics and shifts away from their defaults, so masking is really tested
        for module in original.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.bias.normal_(0, 0.1)
    small = materialize(RESNET_C, found.widths)
    small.load_state_dict(inherit_weights(original, task.space, kept), strict=True)
    masked = mask_channels(original.eval(), task.space, kept)
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(shapes.test_x[:8]), masked(shapes.test_x[:8]))


def test_ratios_per_group_as_mapping_nested_mapping_or_list(shapes):
    space = channel_space(RESNET_A)
    mids = {g.name: 0.5 for g in space if g.role == "mid"}
    found = l1_filter.search(make_task(RESNET_A, shapes, ratio=mids))
    for group in space:
        assert found.widths[group.name] == (group.base // 2 if group.role == "mid" else group.base)
    nested = {"stage3": {"block1": {"mid": 0.75}}}
    found = l1_filter.search(make_task(RESNET_A, shapes, ratio=nested))
    assert found.widths["stage3.block1.mid"] == 16 and found.widths["stage2.block1.mid"] == 32
    flat = l1_filter.search(make_task(RESNET_A, shapes, **{"ratio.stage3.block1.mid": 0.75}))
    assert flat.widths == found.widths
    listed = l1_filter.search(make_task(VGG, shapes, ratio=[0, 0, 0.5, 0.5, 0.5, 0.5, 0.75, 0.75]))
    assert listed.widths["conv1"] == 16 and listed.widths["conv8"] == 32


def test_option_a_streams_cannot_be_pruned(shapes):
    with pytest.raises(ValueError, match=r"method.ratio.stage2.stream: this group cannot be pruned"):
        l1_filter.search(make_task(RESNET_A, shapes, ratio={"stage2.stream": 0.5}))
    found = l1_filter.search(make_task(RESNET_A, shapes, ratio=0.5))
    assert sorted(found.info["fixed_groups"]) == ["stage1.stream", "stage2.stream", "stage3.stream"]


def test_list_of_the_wrong_length_names_the_groups(shapes):
    with pytest.raises(
        ValueError, match=r"method.ratio: a list needs one ratio per prunable group \(8: conv1"
    ):
        l1_filter.search(make_task(VGG, shapes, ratio=[0.5, 0.5]))


def test_pretraining_is_counted_as_search_flops(shapes):
    task = make_task(VGG, shapes, ratio=0.5, pretrain_epochs=1)
    found = l1_filter.search(task)
    assert found.info["images_seen"] == len(shapes.train_y)
    assert found.search_flops == 6 * task.cost_model.base().macs * len(shapes.train_y)
    materialize(VGG, found.widths).load_state_dict(found.weights, strict=True)


def test_widths_never_drop_below_the_group_minimum(shapes):
    found = l1_filter.search(make_task(VGG + ",min_width=8", shapes, ratio=0.99))
    assert min(found.widths.values) == 8


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ratio": 1.2}, r"method.ratio: 1.2 is not allowed; choose a number in \[0, 1\)"),
        ({"ratio": -0.1}, "method.ratio: -0.1 is not allowed"),
        ({"ratio": [0.5, 1.0]}, r"method.ratio\[1\]: 1.0 is not allowed"),
        ({"ratio": []}, "method.ratio: an empty list is not allowed"),
        ({"ratio": {"conv1": "half"}}, "method.ratio.conv1: 'half' is not allowed"),
        ({"ratio.conv2": 2}, "method.ratio.conv2: 2 is not allowed"),
        ({"pretrain_epochs": -1}, "method.pretrain_epochs: -1 is not allowed"),
        ({"pretrain_epochs": 1.5}, "method.pretrain_epochs: 1.5 is not allowed"),
    ],
)
def test_bad_params_name_the_field(params, message):
    with pytest.raises(ValueError, match=message):
        l1_filter.check(params)


def test_method_is_registered_with_plain_defaults():
    assert l1_filter.METHOD.name == "l1_filter"
    l1_filter.check(l1_filter.DEFAULTS)


# Li et al. (Table 1) and Rethinking (Table 3.1): each preset's MACs and parameters. ResNet-34 is priced
# relative to the unpruned model (the paper counts 3.64 GMACs / 21.6M where torchvision's has 3.66 / 21.8M);
# VGG-16-A's parameters relative too (the paper's head has a 512-unit hidden layer, ours one linear layer).
PRESET_MODELS = {
    "vgg16-a": ("vgg_cifar:depth=16", "vgg16"),
    "resnet56-a": ("resnet_cifar:depth=56,shortcut=A", "resnet56"),
    "resnet56-b": ("resnet_cifar:depth=56,shortcut=A", "resnet56"),
    "resnet110-a": ("resnet_cifar:depth=110,shortcut=A", "resnet110"),
    "resnet110-b": ("resnet_cifar:depth=110,shortcut=A", "resnet110"),
    "resnet34-a": ("resnet:depth=34", "resnet34"),
    "resnet34-b": ("resnet:depth=34", "resnet34"),
}


@pytest.mark.parametrize("preset", sorted(PRESET_MODELS))
def test_each_preset_has_the_papers_macs_and_parameters(preset, shapes):
    from widthtune.trainables.l1_presets import PAPER_BASE, PRESETS

    spec, base_name = PRESET_MODELS[preset]
    found = l1_filter.search(make_task(spec, shapes, preset=preset))
    task_cost = CostModel.from_spec(spec)
    cost, base = task_cost.evaluate(found.widths), task_cost.base()
    paper, (paper_base_macs, paper_base_params) = PRESETS[preset], PAPER_BASE[base_name]
    if base_name == "resnet34":
        assert cost.macs / base.macs == pytest.approx(paper.paper_macs / paper_base_macs, rel=5e-3)
        assert cost.params / base.params == pytest.approx(paper.paper_params / paper_base_params, rel=1e-2)
    else:
        assert cost.macs == pytest.approx(paper.paper_macs, rel=2e-3)
        if base_name == "vgg16":
            assert cost.params / base.params == pytest.approx(
                paper.paper_params / paper_base_params, rel=5e-2
            )
        else:
            assert cost.params == pytest.approx(paper.paper_params, rel=1e-2)
    assert found.info["preset"] == preset


def test_resnet56_presets_floor_the_kept_filters_as_the_reference_does(shapes):
    spec = "resnet_cifar:depth=56,shortcut=A"
    a = l1_filter.search(make_task(spec, shapes, preset="resnet56-a"))
    b = l1_filter.search(make_task(spec, shapes, preset="resnet56-b"))
    # int(16 x 0.9) = 14, int(32 x 0.9) = 28, int(64 x 0.9) = 57; B: int(16 x 0.4) = 6, int(32 x 0.7) = 22
    assert a.widths["stage1.block1.mid"] == 14 and a.widths["stage3.block2.mid"] == 57
    assert a.widths["stage1.block8.mid"] == 16 and a.widths["stage3.block9.mid"] == 64  # skipped
    assert b.widths["stage1.block1.mid"] == 6 and b.widths["stage2.block2.mid"] == 22
    cost_model = CostModel.from_spec(spec)
    assert round(cost_model.evaluate(a.widths).macs / 1e6, 1) == 112.4
    assert round(cost_model.evaluate(b.widths).macs / 1e6, 1) == 90.9


def test_a_preset_refuses_another_model_and_a_ratio_beside_it(shapes):
    with pytest.raises(ValueError, match=r"method.preset: 'resnet56-a' prunes a resnet_cifar with 9-9-9"):
        l1_filter.check_model({"preset": "resnet56-a"}, channel_space("resnet_cifar:depth=110,shortcut=A"))
    with pytest.raises(
        ValueError, match=r"method.preset: 'resnet57' is not a preset; choose one of: vgg16-a"
    ):
        l1_filter.check({"preset": "resnet57"})
    with pytest.raises(ValueError, match=r"method.ratio: a preset sets the ratios"):
        l1_filter.check({"preset": "vgg16-a", "ratio": 0.3})
    l1_filter.check_model({"preset": "vgg16-a"}, channel_space("vgg_cifar:depth=16"))


def test_pretraining_defaults_to_the_shared_baseline_on_the_full_recipe():
    from widthtune.trainables.artifacts import ArtifactContext

    context = ArtifactContext(
        model="vgg_cifar:depth=16", data={"name": "cifar10"}, train={"epochs": 160}, seed=2
    )
    (recipe,) = l1_filter.artifacts({}, context).values()
    assert recipe.kind == "trained-model" and recipe.recipe["train"] == {"epochs": 160} and recipe.seed == 2
    assert l1_filter.artifacts({"pretrain_epochs": 3}, context) == {}
    assert l1_filter.METHOD.artifacts({}, context).keys() == {"pretrained"}


def test_the_shared_baseline_is_what_is_pruned(shapes, tmp_path):
    trained = materialize(VGG, seed=0)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.normal_()
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    task = make_task(VGG, shapes, ratio=0.5)
    params = {k: v for k, v in task.params.items() if k != "pretrain_epochs"}
    from dataclasses import replace

    task = replace(task, params=params, artifacts={"pretrained": str(tmp_path / "model.pt")})
    found = l1_filter.search(task)
    group = channel_space(VGG)["conv3"]
    conv = trained.get_submodule(group.members[0].path)
    best = torch.sort(conv.weight.detach().abs().sum(dim=(1, 2, 3)), descending=True).indices[
        : group.base // 2
    ]
    assert found.info["kept"]["conv3"] == sorted(best.tolist()) and found.info["pretrained_artifact"]
    assert found.search_flops == 6 * task.cost_model.base().macs * 3 * len(shapes.train_y)


@pytest.mark.parametrize(
    "spec",
    [
        "densenet_cifar:depth=10,growth=4,resolution=16",  # concatenated inputs follow their groups
        "densenet_cifar:depth=10,growth=4,select=true,resolution=16",  # selections of concatenations
        "preresnet_cifar:depth=11,resolution=16",  # channel selections renumbered
        "preresnet_cifar:depth=11,select=false,resolution=16",
    ],
)
def test_pruned_concatenating_and_selecting_models_compute_what_the_masked_original_computes(shapes, spec):
    task = make_task(spec, shapes, ratio=0.5)
    found = l1_filter.search(task)
    kept = found.info["kept"]
    assert any(found.widths[g.name] < g.base for g in task.space)
    original = randomize_norms(materialize(spec, seed=0))  # what was pruned: no pretraining, same seed
    small = materialize(spec, found.widths)
    small.load_state_dict(found.weights, strict=True)
    small.load_state_dict(inherit_weights(original, task.space, kept), strict=True)
    masked = mask_channels(original, task.space, kept)
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(shapes.test_x[:8]), masked(shapes.test_x[:8]))


def test_a_channel_selection_follows_the_stream_it_reads(shapes):
    spec = "preresnet_cifar:depth=11,resolution=16"
    found = l1_filter.search(make_task(spec, shapes, ratio=0.5))
    kept = found.info["kept"]
    reads = {
        "stage1.block1.select": "stem",
        "stage2.block1.select": "stage1.stream",
        "head.select": "stage3.stream",
    }
    for selection, stream in reads.items():
        assert found.widths[stream] < channel_space(spec)[stream].base
        assert list(kept[selection]) == list(kept[stream])  # at the base, selection channel i reads channel i
