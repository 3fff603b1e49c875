"""L1-norm filter pruning: predefined ratios, top-L1 filters kept, stream scores summed, weights inherited."""

import json

import pytest
import torch
from torch import nn

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
