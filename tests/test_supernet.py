"""The weight-sharing supernet: extracted sub-networks reproduce it, BN recalibration, sampling, checkpoints."""

import copy
import io
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from widthtune.models.catalog import FamilyEntry
from widthtune.models.inherit import mask_channels
from widthtune.models.registry import FAMILIES, Family, channel_space, materialize
from widthtune.models.space import ChannelGroup, ChannelSpace, Member
from widthtune.models.supernet import Supernet, SupernetError, random_widths, sandwich
from widthtune.models.widths import Widths
from widthtune.training import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET_A = "resnet_cifar:depth=8,resolution=16,shortcut=A"
RESNET_C = "resnet_cifar:depth=8,resolution=16,shortcut=C"
VGG = "vgg_cifar:depth=11,width=0.25,resolution=16"
MOBILENET = "mobilenet_v2:width=0.25,resolution=16"
RESNET = "resnet:layers=1-1-1-1,width=0.125,resolution=16,num_classes=10"
TORCHVISION = "torchvision:mobilenet_v3_small,width_mult=0.25,resolution=16,num_classes=10"
DENSENET = "densenet_cifar:depth=10,growth=4,resolution=16"
PRERESNET = "preresnet_cifar:depth=11,width=0.5,select=false,resolution=16"
FAMILY_SPECS = [RESNET_A, RESNET_C, VGG, MOBILENET, RESNET, TORCHVISION, DENSENET, PRERESNET]
TINY_SOURCE = """
from torch import nn

def make(num_classes=10, hidden=12):
    return nn.Sequential(
        nn.Conv2d(3, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(hidden, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(32, num_classes))
"""


@pytest.fixture(scope="module")
def python_spec(tmp_path_factory):
    """A user model (generic path) whose linear reads flattened 2x2 channel maps."""
    source = tmp_path_factory.mktemp("models") / "tiny.py"
    source.write_text(textwrap.dedent(TINY_SOURCE))
    return f"python:{source}:make,resolution=16"


@pytest.fixture(params=[*FAMILY_SPECS, "python"])
def spec(request, python_spec):
    return python_spec if request.param == "python" else request.param


@pytest.fixture(scope="module")
def shared():
    """One supernet per spec for the tests that recalibrate before they look (building is the slow part)."""
    supernets = {}

    def get(spec):
        if spec not in supernets:
            supernets[spec] = make_supernet(spec)
        return supernets[spec]

    return get


def images(count=5, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(count)]


def make_supernet(spec, seed=0, calibration_batches=2, **kwargs):
    """A 1.5x supernet whose BN affines are far from their defaults, so masking and slicing both matter."""
    supernet = Supernet(
        spec,
        Widths.base(channel_space(spec)).scale(1.5),
        seed=seed,
        calibration_batches=calibration_batches,
        **kwargs,
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in supernet.model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=generator))
    return supernet


def shrunk_widths(supernet, seed=1):
    """Random widths below the maximum in every group that has room."""
    rng = np.random.default_rng(seed)
    high = {
        g.name: max(supernet.min_widths[g.name], supernet.max_widths[g.name] - g.divisor)
        for g in supernet.space
    }
    return random_widths(supernet.min_widths, Widths(supernet.space, tuple(high.values())), rng)


def free_indices(supernet, widths, seed=2):
    """Index sets of the given sizes drawn anywhere in each group (CafeNet's locally free pattern)."""
    rng = np.random.default_rng(seed)
    return {
        name: sorted(rng.choice(supernet.max_widths[name], widths[name], replace=False).tolist())
        for name in supernet.space.names
    }


def choices(supernet, pattern):
    """(label, choice) at a shrunk width vector and at the maximum, in the given pattern."""
    for label, widths in (("shrunk", shrunk_widths(supernet)), ("max", supernet.max_widths)):
        yield label, widths if pattern == "fixed" else free_indices(supernet, widths)


@pytest.mark.parametrize("pattern", ["fixed", "free"])
def test_extract_loads_strictly_and_gives_the_supernets_logits(spec, pattern, shared):
    supernet = shared(spec)
    assert supernet.reuses_one_skeleton  # every family and the generic path run on one re-sized frame
    batches = images()
    for label, choice in choices(supernet, pattern):
        subnet = supernet.subnet(choice)
        if label == "shrunk":
            assert any(subnet.widths[n] < supernet.max_widths[n] for n in supernet.space.names)
        assert subnet.fixed == (pattern == "fixed" or label == "max")
        supernet.recalibrate(subnet, batches)
        supernet.eval()
        expected = supernet(batches[0], subnet)
        model = materialize(spec, subnet.widths)
        model.load_state_dict(supernet.extract(subnet), strict=True)
        actual = model.eval()(batches[0])
        assert expected.abs().max() > 1e-3, label  # the check is not vacuous
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=f"{spec} {pattern} {label}")


@pytest.mark.parametrize("spec", [RESNET_C, VGG, MOBILENET, RESNET, TORCHVISION, DENSENET, PRERESNET])
def test_a_subnetwork_is_the_supernet_with_its_other_channels_masked(spec, shared):
    # the shared weights are sliced at exactly the chosen channels: zeroing every other channel's BN
    # affines in the full model gives the same logits (not for option A, whose smaller model re-pads)
    supernet = shared(spec)
    subnet = supernet.subnet(free_indices(supernet, shrunk_widths(supernet)))
    batches = images()
    supernet.recalibrate(subnet, batches)
    masked = mask_channels(copy.deepcopy(supernet.model).eval(), supernet.shared_space, subnet.kept)
    with torch.no_grad():
        expected = masked(batches[0])
        actual = supernet.eval()(batches[0], subnet)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_gradients_reach_exactly_the_kept_channels():
    supernet = make_supernet(VGG).train()
    kept = free_indices(supernet, shrunk_widths(supernet))
    subnet = supernet.subnet(kept)
    supernet(images(1)[0], subnet).square().mean().backward()
    first = supernet.model.features[0].weight.grad  # conv1's outputs
    rows = torch.zeros(first.shape[0], dtype=torch.bool)
    rows[kept["conv1"]] = True
    assert first[~rows].abs().max() == 0 and (first[rows].flatten(1).abs().sum(1) > 0).all()
    classifier = supernet.model.classifier.weight.grad  # reads the last group
    cols = torch.zeros(classifier.shape[1], dtype=torch.bool)
    cols[kept["conv8"]] = True
    assert classifier[:, ~cols].abs().max() == 0 and classifier[:, cols].abs().sum() > 0


def test_mobilenet_depthwise_convs_follow_their_group(shared):
    supernet = shared(MOBILENET)
    kept = free_indices(supernet, shrunk_widths(supernet))
    subnet = supernet.subnet(kept)
    state = supernet.extract(subnet)
    group = "stage2.block1.expand"
    depthwise = next(m for m in supernet.space[group].members if m.kind == "in")  # the depthwise conv
    full = supernet.model.get_submodule(depthwise.path).weight
    torch.testing.assert_close(state[f"{depthwise.path}.weight"], full[kept[group]].detach())


def test_train_mode_forward_leaves_the_running_statistics_alone():
    supernet = make_supernet(RESNET_C).train()
    before = {k: v.clone() for k, v in supernet.model.named_buffers()}
    supernet(images(1)[0], shrunk_widths(supernet))
    supernet(images(1)[0])
    for key, value in supernet.model.named_buffers():
        assert torch.equal(value, before[key]), key


def test_recalibration_is_the_cumulative_average_over_the_first_n_batches():
    supernet = make_supernet(MOBILENET, calibration_batches=3)
    subnet = supernet.subnet(free_indices(supernet, shrunk_widths(supernet)))
    reference = materialize(MOBILENET, subnet.widths)
    reference.load_state_dict(supernet.extract(subnet), strict=True)
    reference.eval()
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
            module.train()
    batches = images(count=6)
    with torch.no_grad():
        for x in batches[:3]:
            reference(x)
    stats = supernet.recalibrate(subnet, [(x, torch.zeros(4)) for x in batches])  # (images, labels) pairs
    expected = {k: v for k, v in reference.state_dict().items() if k.rsplit(".", 1)[-1] in stats_names()}
    assert stats.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(stats[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert all(int(v) == 3 for k, v in stats.items() if k.endswith("num_batches_tracked"))
    assert len(supernet.recalibrate(subnet, batches, count=1)) == len(stats)  # count overrides the default


def stats_names():
    return {"running_mean", "running_var", "num_batches_tracked"}


def test_recalibration_writes_back_only_the_subnetworks_channels():
    supernet = make_supernet(VGG)
    with torch.no_grad():
        supernet.model.features[1].running_mean.fill_(7.0)
    kept = free_indices(supernet, shrunk_widths(supernet))
    supernet.recalibrate(supernet.subnet(kept), images())
    mean = supernet.model.features[1].running_mean
    others = sorted(set(range(len(mean))) - set(kept["conv1"]))
    assert torch.equal(mean[others], torch.full((len(others),), 7.0))
    assert not torch.isclose(mean[kept["conv1"]], torch.tensor(7.0)).any()


def test_recalibration_needs_its_batches():
    supernet = make_supernet(RESNET_C, calibration_batches=5)
    with pytest.raises(SupernetError, match="needs 5 batches, the data gave only 2"):
        supernet.recalibrate(None, images(count=2))
    with pytest.raises(SupernetError, match="count=0"):
        supernet.recalibrate(None, images(), count=0)


def test_bound_subnetwork_evaluates_like_the_extracted_model():
    supernet = make_supernet(RESNET_A)
    subnet = supernet.subnet(shrunk_widths(supernet))
    batches = images()
    supernet.recalibrate(subnet, batches)
    labels = torch.arange(8) % 10
    x = torch.cat(batches[:2])
    model = materialize(RESNET_A, subnet.widths)
    model.load_state_dict(supernet.extract(subnet), strict=True)
    bound = supernet.bind(subnet)
    assert bound.widths == subnet.widths
    assert {id(p) for p in bound.parameters()} == {id(p) for p in supernet.parameters()}
    loss, accuracy = evaluate(bound, x, labels, batch_size=5)
    expected_loss, expected_accuracy = evaluate(model, x, labels, batch_size=5)
    assert loss == pytest.approx(expected_loss, rel=1e-5) and accuracy == expected_accuracy


def test_random_widths_respect_bounds_and_divisors_and_are_seeded():
    supernet = Supernet(MOBILENET, Widths.base(channel_space(MOBILENET)).scale(1.5))
    draws = [supernet.sample(np.random.default_rng(3)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = np.random.default_rng(4)
    samples = np.array([supernet.sample(rng).values for _ in range(300)])
    low, high = np.array(supernet.smallest.values), np.array(supernet.largest.values)
    divisors = np.array([g.divisor for g in supernet.space])
    assert (samples >= low).all() and (samples <= high).all() and (samples % divisors == 0).all()
    assert (samples.min(0) == low).all() and (samples.max(0) == high).all()  # both ends are drawn
    assert len({tuple(row) for row in samples}) > 290  # per group, not one multiplier for all


def test_sandwich_is_largest_smallest_then_n_random():
    supernet = Supernet(RESNET_C, min_widths=Widths.base(channel_space(RESNET_C)).scale(0.5))
    widths = supernet.sandwich(2, np.random.default_rng(0))
    assert len(widths) == 4 and widths[0] == supernet.largest and widths[1] == supernet.smallest
    assert widths[2:] == sandwich(supernet.smallest, supernet.largest, 2, np.random.default_rng(0))[2:]
    assert supernet.sandwich(0, np.random.default_rng(0)) == [supernet.largest, supernet.smallest]


def test_checkpoint_round_trips_through_weights_only_load():
    supernet = make_supernet(MOBILENET)
    subnet = supernet.subnet(free_indices(supernet, shrunk_widths(supernet)))
    supernet.recalibrate(subnet, images())
    buffer = io.BytesIO()
    torch.save(supernet.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    restored = Supernet(MOBILENET, supernet.max_widths, seed=9)
    restored.load_state_dict(state)
    x = images(1)[0]
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x, subnet.kept), supernet.eval()(x, subnet))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.subnet({**s.max_widths, "stage1.stream": 32}), "'stage1.stream' asks for 32 channels"),
        (lambda s: s.subnet({"stage1.stream": [0, 1], "stage2.stream": 8}), "not both"),
        (
            lambda s: s.subnet({"stage1.stream": [0, 99]}),
            r"kept.stage1.stream: indices must lie in \[0, 24\)",
        ),
        (
            lambda s: s.subnet({"stage1.stream": [0, 1.5]}),
            "kept.stage1.stream: channel indices must be integers",
        ),
        (lambda s: s.subnet(Supernet(RESNET_C).subnet()), "another model or other widths"),
        (lambda s: s.sandwich(-1, np.random.default_rng(0)), "n=-1"),
        (lambda s: s.sample(0), "numpy Generator"),
        (lambda s: Supernet(RESNET_C, calibration_batches=0), "calibration_batches=0"),
        (lambda s: Supernet(RESNET_C, min_widths={**s.max_widths}), "minimum 24 above maximum 16"),
    ],
)
def test_bad_arguments_name_what_is_wrong(call, message):
    supernet = Supernet(RESNET_C, Widths.base(channel_space(RESNET_C)).scale(1.5))
    with pytest.raises(ValueError, match=message):
        call(supernet)


class FlatPool(nn.Module):
    """Average pooling through a reshape by a channel count of its own: a width the frame cannot set."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        return x.reshape(x.shape[0], self.channels, -1).mean(-1)


def pooled_family(members=(Member("0"), Member("1"), Member("4", "in"))):
    """conv-BN-ReLU-FlatPool-linear with one channel group made of `members`."""
    defaults = {"num_classes": 10, "resolution": 16, "in_channels": 3, "divisor": 1, "min_width": 1}

    def space(options):
        return ChannelSpace((ChannelGroup("conv", 12, members),))

    def build(options, widths):
        c = widths["conv"]
        return nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), FlatPool(c), nn.Linear(c, 10)
        )

    return Family(FamilyEntry("pooled", "a test family", defaults), space, build)


def test_a_model_the_frame_cannot_resize_gets_one_cached_skeleton_per_width_vector(monkeypatch):
    monkeypatch.setitem(FAMILIES, "pooled", pooled_family())
    supernet = Supernet("pooled", {"conv": 18}, calibration_batches=2, cache_size=2)
    assert not supernet.reuses_one_skeleton
    for choice in ({"conv": 7}, {"conv": [1, 4, 5, 9, 17]}, None):
        subnet = supernet.subnet(choice)
        supernet.recalibrate(subnet, images())
        model = materialize("pooled", subnet.widths)
        model.load_state_dict(supernet.extract(subnet), strict=True)
        x = images(1)[0]
        torch.testing.assert_close(model.eval()(x), supernet.eval()(x, subnet))
    assert len(supernet._skeletons) == 2  # the least recently used one was dropped


def test_a_space_that_misses_a_member_is_refused_when_the_supernet_is_built(monkeypatch):
    monkeypatch.setitem(FAMILIES, "pooled", pooled_family(members=(Member("0"), Member("1"))))
    with pytest.raises(SupernetError, match=r"cannot slice 4\.weight: \(10, 18\) cut from the supernet"):
        Supernet("pooled", {"conv": 18})


def test_channel_selections_are_refused_with_what_to_set():
    with pytest.raises(SupernetError, match=r"'layer1.0.select' is a channel selection.*select=false"):
        Supernet("preresnet_cifar:depth=11,width=0.5,resolution=16")
