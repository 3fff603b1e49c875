"""Weight inheritance: the sliced small model computes exactly what the masked original computes (eval mode)."""

import copy

import pytest
import torch
from torch import nn

from model_checks import randomize_norms
from widthtune.models.inherit import (
    check_pad_shortcuts,
    complete_kept,
    inherit_weights,
    kept_widths,
    mask_channels,
    pad_linked_groups,
    top_channels,
)
from widthtune.models.registry import channel_space, materialize
from widthtune.models.space import ChannelGroup, ChannelSpace, Member
from widthtune.models.surgery import resize

VGG = "vgg_cifar:depth=11,width=0.25,resolution=16"
RESNET_C = "resnet_cifar:depth=8,resolution=16,shortcut=C"
RESNET_A = "resnet_cifar:depth=8,resolution=16,shortcut=A"
MOBILENET = "mobilenet_v2:width=0.25,resolution=16"


def randomized(spec, seed=0):
    """A base model whose BN affines and running statistics are far from their defaults."""
    return randomize_norms(materialize(spec, seed=seed), seed)


def random_kept(space, seed=0, share=0.5, groups=None):
    """About `share` of each group's channels (a multiple of its divisor), chosen at random."""
    generator = torch.Generator().manual_seed(seed)
    kept = {}
    for group in space:
        if groups is not None and group.name not in groups:
            continue
        count = max(group.divisor, round(group.base * share / group.divisor) * group.divisor)
        kept[group.name] = sorted(torch.randperm(group.base, generator=generator)[:count].tolist())
    return kept


def assert_inherited_equals_masked(spec, kept, seed=0):
    space = channel_space(spec)
    original = randomized(spec, seed)
    state = inherit_weights(original, space, kept)
    small = materialize(spec, kept_widths(space, kept))
    small.load_state_dict(state, strict=True)
    small.eval()
    masked = mask_channels(original, space, kept)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        expected, actual = masked(x), small(x)
    assert expected.abs().max() > 1e-3  # the check is not vacuous
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    return state


def test_vgg_inherited_model_equals_masked_original():
    space = channel_space(VGG)
    state = assert_inherited_equals_masked(VGG, random_kept(space))
    assert state["classifier.weight"].shape[1] == kept_widths(space, random_kept(space))["conv8"]


def test_resnet_option_c_streams_are_sliced_in_every_member():
    space = channel_space(RESNET_C)
    kept = random_kept(space, seed=3)
    state = assert_inherited_equals_masked(RESNET_C, kept, seed=3)
    stream = space["stage2.stream"]
    width = len(kept["stage2.stream"])
    for member in stream.members:
        weight = state[f"{member.path}.weight"]
        assert weight.shape[0 if member.kind == "out" else 1] == width


def test_resnet_option_a_with_whole_streams_equals_masked_original():
    space = channel_space(RESNET_A)
    mids = [g.name for g in space if g.role == "mid"]
    assert_inherited_equals_masked(RESNET_A, random_kept(space, groups=mids))


def aligned_stream(inputs, base_in, base_out, width, generator):
    """Kept channels of the next stream that both zero-pad routings agree on: the image, then random extras."""
    image = [i + (base_out - base_in) // 2 for i in inputs]
    below = (width - len(inputs)) // 2
    lower = torch.randperm(image[0], generator=generator)[:below].tolist()
    upper = (image[-1] + 1 + torch.randperm(base_out - image[-1] - 1, generator=generator))[
        : width - len(inputs) - below
    ]
    return sorted(lower + image + upper.tolist())


def test_resnet_option_a_with_aligned_streams_equals_masked_original():
    # the base pads (b - a) // 2 channels in front, the pruned model (n - m) // 2: kept input channel i must
    # land on the same kept output channel both ways, so each stream's kept set holds the shifted previous one
    generator = torch.Generator().manual_seed(7)
    stage1 = [0, 1, 2, 4, 5, 7, 8, 9, 11, 12, 13, 15]
    stage2 = aligned_stream(stage1, 16, 32, 20, generator)
    stage3 = aligned_stream(stage2, 32, 64, 40, generator)
    kept = {"stage1.stream": stage1, "stage2.stream": stage2, "stage3.stream": stage3}
    space = channel_space(RESNET_A)
    kept.update(random_kept(space, groups=[g.name for g in space if g.role == "mid"]))
    check_pad_shortcuts(materialize(RESNET_A), space, kept)
    assert_inherited_equals_masked(RESNET_A, kept)


def test_misaligned_option_a_streams_are_refused():
    kept = {"stage2.stream": list(range(16))}  # stage1 would land on 8..23 in the base, on 0..15 pruned
    with pytest.raises(ValueError, match=r"zero-pad shortcut 'layer2\.0\.downsample'"):
        inherit_weights(materialize(RESNET_A), channel_space(RESNET_A), kept)


def test_pad_linked_groups_are_the_option_a_streams():
    assert pad_linked_groups(materialize(RESNET_A), channel_space(RESNET_A)) == {
        "stage1.stream",
        "stage2.stream",
        "stage3.stream",
    }
    assert pad_linked_groups(materialize(RESNET_C), channel_space(RESNET_C)) == frozenset()


def test_mobilenet_v2_depthwise_convs_follow_their_group():
    space = channel_space(MOBILENET)
    assert_inherited_equals_masked(MOBILENET, random_kept(space, seed=5), seed=5)


def test_linear_reading_flattened_channels_takes_each_channels_block():
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5)
    ).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].bias.normal_()
    group = ChannelGroup("conv", 6, (Member("0"), Member("1"), Member("4", "in")))
    space = ChannelSpace((group,))
    kept = {"conv": [1, 4, 5]}
    state = inherit_weights(model, space, kept)
    small = resize(copy.deepcopy(model), space, {"conv": 3})
    small.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(
            small.eval()(x), mask_channels(model, space, kept)(x), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize(
    ("kept", "message"),
    [
        ({"nope": [0]}, "unknown groups nope"),
        ({"conv1": []}, "kept.conv1: keeps no channel"),
        ({"conv1": [0, 0]}, "kept.conv1: repeats"),
        ({"conv1": [16]}, r"kept.conv1: indices must lie in \[0, 16\)"),
        ({"conv1": [0.5]}, "kept.conv1: channel indices must be integers"),
    ],
)
def test_bad_kept_indices_name_the_group(kept, message):
    with pytest.raises(ValueError, match=message):
        complete_kept(channel_space(VGG), kept)


def test_kept_widths_respect_divisors():
    space = channel_space("vgg_cifar:depth=11,width=0.25,divisor=8")
    with pytest.raises(ValueError, match="divisor 8"):
        kept_widths(space, {"conv1": [0, 1, 2]})
    assert kept_widths(space, {"conv1": list(range(8))})["conv1"] == 8


def test_top_channels_keeps_the_best_in_original_order():
    assert top_channels(torch.tensor([0.1, 0.9, 0.5, 0.9, 0.0]), 3) == (1, 2, 3)
    assert top_channels(torch.tensor([1.0, 1.0, 1.0]), 2) == (0, 1)
