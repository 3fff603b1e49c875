"""Concatenations, chunks and channel shuffles: their groups, exact costs, surgery and weight inheritance."""

import random
import textwrap
import time

import pytest
import torch
from torch import nn

from model_checks import assert_cost_exact, randomize_norms
from widthtune.models import SpecError, Widths, WidthsError, channel_space, input_shape, materialize
from widthtune.models.cost import CostModel
from widthtune.models.inherit import inherit_weights, kept_widths, mask_channels, pad_linked_groups
from widthtune.models.space import Member

MODELS = textwrap.dedent('''
    import torch
    from torch import nn


    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))


    class ConcatAfterAdd(nn.Module):
        """cat(a, b) + c: c writes a's and b's channels side by side; e's output is chunked into tied halves."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = nn.Sequential(block(3, 16), nn.ReLU())
            self.a, self.b, self.c = block(16, 8), block(16, 12), block(16, 20)
            self.relu = nn.ReLU()
            self.d = block(20, 24)
            self.e = nn.Conv2d(44, 32, 1)
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            s = self.stem(x)
            y = torch.cat([self.a(s), self.b(s)], 1) + self.c(s)
            w = self.relu(torch.cat([self.d(y), y], 1))
            p, q = self.e(w).chunk(2, dim=1)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(p * torch.sigmoid(q), 1), 1))


    class Shuffle3(nn.Module):
        """A grouped conv, then a channel shuffle over 3 groups: the width must stay a multiple of 3."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.a = nn.Conv2d(3, 24, 3, padding=1)
            self.b = nn.Conv2d(24, 24, 1, groups=3)
            self.fc = nn.Linear(24, num_classes)

        def forward(self, x):
            y = self.a(x)
            n, c, h, w = y.shape
            y = y.view(n, 3, c // 3, h, w).transpose(1, 2).reshape(n, c, h, w)
            return self.fc(self.b(y).mean([2, 3]))


    class ChannelPad(nn.Module):
        """Pads channels with zeros (a zero-pad shortcut written by hand): no width can follow that."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(12, num_classes)

        def forward(self, x):
            y = nn.functional.pad(self.a(x), (0, 0, 0, 0, 2, 2))
            return self.fc(y.mean([2, 3]))
''')


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "concat_models.py"
    path.write_text(MODELS)
    return path


def spec_of(models, name):
    return f"python:{models}:{name},resolution=16"


def random_widths(space, seed, low, high):
    rng = random.Random(seed)
    return Widths.from_mapping(space, {g.name: g.base * rng.uniform(low, high) for g in space}, round=True)


def test_a_conv_added_to_a_concatenation_writes_its_groups_in_order(models):
    space = channel_space(spec_of(models, "ConcatAfterAdd"))
    assert [(g.name, g.base) for g in space] == [
        ("stem.0.0", 16),
        ("a.0", 8),
        ("b.0", 12),
        ("d.0", 24),
        ("e", 16),
    ]
    concats = {(c.path, c.kind): c.parts for c in space.concats}
    assert concats[("c.0", "out")] == concats[("c.1", "out")] == ("a.0", "b.0")
    assert concats[("d.0", "in")] == ("a.0", "b.0")
    assert concats[("e", "in")] == ("d.0", "a.0", "b.0")  # the consumer sees the groups in cat order
    assert concats[("e", "out")] == ("e", "e")  # chunk's halves: one width, tied
    assert Member("fc", "in") in space["e"].members
    assert space["a.0"].role == "stream"  # a and c write it


@pytest.mark.parametrize(("low", "high"), [(0.3, 0.9), (1.1, 1.9)], ids=["shrunk", "grown"])
def test_concat_after_add_costs_are_exact_and_surgery_follows(models, low, high):
    spec = spec_of(models, "ConcatAfterAdd")
    cost_model = CostModel.from_spec(spec)
    widths = random_widths(cost_model.space, f"add{low}", low, high)
    model = assert_cost_exact(spec, widths, cost_model)
    assert model.c[0].out_channels == widths["a.0"] + widths["b.0"]
    assert model.e.in_channels == widths["d.0"] + widths["a.0"] + widths["b.0"]
    assert model.e.out_channels == 2 * widths["e"]
    # LW-DNA's extras (2 per BN, 1 per ReLU output element) include the ReLU on the concatenation
    assert cost_model.evaluate(widths).lwdna - cost_model.evaluate(widths).macs == bn_relu_elements(
        model, input_shape(spec)
    )


def bn_relu_elements(model, shape):
    counted = []
    hooks = [
        m.register_forward_hook(
            lambda m, i, o: counted.append(o[0].numel() * (1 + isinstance(m, nn.BatchNorm2d)))
        )
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d | nn.ReLU)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(shape))
    for hook in hooks:
        hook.remove()
    return sum(counted)


def random_kept(space, seed, groups=None, share=0.5):
    generator = torch.Generator().manual_seed(seed)
    kept = {}
    for group in space:
        if groups is None or group.name in groups:
            count = max(group.divisor, round(group.base * share / group.divisor) * group.divisor)
            kept[group.name] = sorted(torch.randperm(group.base, generator=generator)[:count].tolist())
    return kept


def assert_inherited_equals_masked(spec, kept, resolution):
    space = channel_space(spec)
    original = randomize_norms(materialize(spec, seed=0))
    small = materialize(spec, kept_widths(space, kept))
    small.load_state_dict(inherit_weights(original, space, kept), strict=True)
    masked = mask_channels(original, space, kept)
    x = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = masked(x), small.eval()(x)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_concat_after_add_inherits_every_input_slice(models):
    spec = spec_of(models, "ConcatAfterAdd")
    assert_inherited_equals_masked(spec, random_kept(channel_space(spec), 0), 16)


def test_densenet_inherits_each_concatenated_slice():
    spec = "torchvision:densenet121,resolution=32"
    space = channel_space(spec)
    norm1 = next(c for c in space.concats if c.path == "features.denseblock2.denselayer3.norm1")
    assert norm1.parts == (
        "features.transition1.conv",
        "features.denseblock2.denselayer1.conv2",
        "features.denseblock2.denselayer2.conv2",
    )
    assert_inherited_equals_masked(spec, random_kept(space, 3), 32)


def test_shufflenet_ties_each_stage_and_keeps_shuffled_groups_whole():
    spec = "torchvision:shufflenet_v2_x1_0,resolution=32"
    space = channel_space(spec)
    stream = space["stage2.0.branch1.2"]  # both branches of the first block and every chunked half
    assert Member("stage2.0.branch2.5") in stream.members and stream.divisor == 2
    tied = {c.path for c in space.concats if c.parts == ("stage2.0.branch1.2",)}
    assert {"stage2.1.branch2.5", "stage2.2.branch2.5", "stage2.1.branch2.0"} <= tied
    assert all(c.shuffled for c in space.concats)
    with pytest.raises(WidthsError, match="divisor 2"):
        Widths.from_mapping(space, {**Widths.base(space).as_dict(), stream.name: 57})
    inner = [g.name for g in space if g.name.endswith("branch2.0")]
    assert set(pad_linked_groups(materialize(spec), space)) == set(space.names) - set(inner) - {
        "conv1.0",
        "conv5.0",
    }
    assert_inherited_equals_masked(spec, random_kept(space, 1, groups=[*inner, "conv1.0", "conv5.0"]), 32)
    with pytest.raises(ValueError, match="channel shuffle"):
        inherit_weights(materialize(spec), space, random_kept(space, 1, groups=[stream.name]))


def test_a_shuffle_over_three_groups_makes_the_width_a_multiple_of_three(models):
    spec = spec_of(models, "Shuffle3")
    space = channel_space(spec)
    assert space["a"].divisor == 3
    with pytest.raises(WidthsError, match="'a' is 25, not a multiple of its divisor 3"):
        Widths.from_mapping(space, {"a": 25, "b": 12})
    widths = Widths.from_mapping(space, {"a": 30, "b": 12})
    assert_cost_exact(spec, widths, CostModel.from_spec(spec))


def test_what_widths_cannot_follow_is_one_line_naming_the_layer(models):
    with pytest.raises(SpecError) as error:
        channel_space(spec_of(models, "ChannelPad"))
    message = str(error.value)
    assert "\n" not in message and "pad" in message.lower() and "channel count" in message


TORCHVISION = [
    pytest.param("torchvision:squeezenet1_1,resolution=64", id="squeezenet1_1"),
    pytest.param("torchvision:shufflenet_v2_x1_0,resolution=64", id="shufflenet_v2_x1_0"),
    pytest.param("torchvision:googlenet,resolution=64", id="googlenet", marks=pytest.mark.slow),
    pytest.param("torchvision:densenet121,resolution=64", id="densenet121", marks=pytest.mark.slow),
    pytest.param("torchvision:inception_v3,resolution=299", id="inception_v3", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("spec", TORCHVISION)
def test_torchvision_concat_models_cost_exactly_and_train_at_any_widths(spec):
    start = time.perf_counter()
    cost_model = CostModel.from_spec(spec)
    widths = random_widths(cost_model.space, spec, 0.3, 1.8)  # some groups shrunk, others grown
    ratios = [widths[g.name] / g.base for g in cost_model.space]
    assert min(ratios) < 0.9 and max(ratios) > 1.1
    model = assert_cost_exact(spec, widths, cost_model)
    model.train()(torch.randn(input_shape(spec, batch=2)))  # auxiliary heads run and fit too
    print(f"{spec}: {time.perf_counter() - start:.1f}s")
