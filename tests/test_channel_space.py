"""Channel groups: residual adds couple, depthwise convs follow their input, the classifier output is never a group."""

import textwrap

import pytest

from widthtune.models import Member, SpecError, channel_space, create_model
from widthtune.models.cost import CostModel


def group_of(space, path, kind="out"):
    return next(g.name for g in space if Member(path, kind) in g.members)


def test_resnet_cifar_stage_streams_couple_every_block_output():
    space = channel_space("resnet_cifar:depth=20,shortcut=C")
    assert len(space) == 3 + 9
    stream = space["stage2.stream"]
    for b in range(3):
        assert Member(f"layer2.{b}.conv2") in stream.members
    assert Member("layer2.0.downsample.0") in stream.members
    assert group_of(space, "conv1") == "stage1.stream"  # the stem writes into stage 1's stream
    assert group_of(space, "layer3.0.conv1", "in") == "stage2.stream"
    assert group_of(space, "fc", "in") == "stage3.stream"
    assert not any(Member("fc") in g.members for g in space)
    assert [space[n].stage for n in ("stage1.stream", "stage2.block3.mid")] == [1, 2]
    assert space["stage2.block3.mid"].block == 3


def test_resnet_cifar_shortcut_a_has_no_projection_parameters():
    a = create_model("resnet_cifar:depth=20,shortcut=A")
    c = create_model("resnet_cifar:depth=20,shortcut=C")
    assert not any("downsample.0" in name for name, _ in a.named_parameters())
    extra = sum(p.numel() for p in c.parameters()) - sum(p.numel() for p in a.parameters())
    assert extra == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_mobilenet_depthwise_follows_its_expansion_group():
    space = channel_space("mobilenet_v2")
    expand = space["stage2.block1.expand"]
    assert Member("features.2.conv.1.0") in expand.members  # depthwise conv
    assert expand.base == 16 * 6
    # the t=1 block has no expansion: its depthwise conv follows the stem
    assert Member("features.1.conv.0.0") in space["stem"].members
    assert space["stage4.block2.expand"].divisor == 8


def writers(space):
    return sorted(sorted((m.path, m.kind) for m in g.members if m.kind == "out") for g in space)


@pytest.mark.parametrize(
    "spec", ["torchvision:resnet18,resolution=64", "torchvision:mobilenet_v2,resolution=64"]
)
def test_generic_groups_match_the_family_groups(spec):
    family = {
        "torchvision:resnet18,resolution=64": "resnet:depth=18,resolution=64",
        "torchvision:mobilenet_v2,resolution=64": "mobilenet_v2:stem=imagenet,num_classes=1000,resolution=64",
    }[spec]
    generic, own = channel_space(spec), channel_space(family)
    assert len(generic) == len(own)
    assert sorted(g.base for g in generic) == sorted(g.base for g in own)
    assert writers(generic) == writers(own)


def test_generic_grouped_convs_set_the_divisor():
    space = channel_space("torchvision:regnet_x_400mf,resolution=64")
    assert max(g.divisor for g in space) > 1
    assert all(g.base % g.divisor == 0 for g in space)


def test_python_factory_is_a_model_family(tmp_path):
    source = tmp_path / "tiny.py"
    source.write_text(
        textwrap.dedent("""
        from torch import nn

        def make(num_classes=10, hidden=12):
            return nn.Sequential(
                nn.Conv2d(3, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
                nn.Conv2d(hidden, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, num_classes))
    """)
    )
    spec = f"python:{source}:make,hidden=20,resolution=16"
    space = channel_space(spec)
    assert [g.base for g in space] == [20, 24]
    widths = {space.names[0]: 7, space.names[1]: 40}
    model = create_model(spec, widths)
    assert model[0].out_channels == 7 and model[3].out_channels == 40 and model[8].in_features == 40
    assert CostModel.from_spec(spec).evaluate(widths).params == sum(p.numel() for p in model.parameters())


def test_unsupported_models_get_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match=r"op Addmm after layer 'features.1.0.norm1': mixes channels outside"):
        channel_space("torchvision:swin_t,resolution=64")
    with pytest.raises(SpecError, match="not a torchvision classification model"):
        channel_space("torchvision:not_a_model")
    with pytest.raises(SpecError, match="no file"):
        channel_space(f"python:{tmp_path}/missing.py:make")
    with pytest.raises(SpecError, match="unknown model family"):
        channel_space("alexnet:depth=3")
