"""The LW-DNA hypernetwork: kernel shapes, latent gradients, exact shrinking, loadable generated weights."""

import pytest
import torch
from torch import nn

from widthtune.models.hypernet import HypernetError, layout_groups, reparameterize, shrink
from widthtune.models.registry import channel_space, materialize
from widthtune.models.widths import Widths

SPECS = [
    "resnet_cifar:depth=8",
    "vgg_cifar:depth=11,width=0.25",
    "mobilenet_v2:width=0.25",
    "densenet_cifar:depth=10,growth=4,resolution=16",  # concatenated inputs and BNs
    "preresnet_cifar:depth=11,resolution=16",  # channel selections in front of each block's BN
    "preresnet_cifar:depth=11,select=false,resolution=16",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def widened(spec, beta=2.0):
    return Widths.base(channel_space(spec)).scale(beta)


def every_other(hypernet):
    """Keep a legal, irregular subset of every group: the first channel, then every other one."""
    keep = {}
    for group in hypernet.space:
        width = hypernet.widths[group.name]
        count = max(group.divisor, (width // 2) // group.divisor * group.divisor)
        keep[group.name] = sorted({0, *range(1, width, 2)})[:count]
    return keep


@pytest.fixture(scope="module", params=SPECS)
def pair(request):
    """A widened hypernetwork and its shrunk copy (kept channels listed per group)."""
    spec = request.param
    hypernet = reparameterize(spec, widened(spec), m=8, seed=3)
    keep = every_other(hypernet)
    return hypernet, shrink(hypernet, keep), keep


def test_kernels_have_the_shapes_of_the_models_weights(pair):
    hypernet, _, _ = pair
    state = materialize(hypernet.spec, hypernet.widths).state_dict()
    generated = hypernet.generated()
    assert set(generated) <= set(state)
    for name, tensor in generated.items():
        assert tensor.shape == state[name].shape, name
    modules = dict(hypernet.model.named_modules())
    convs_and_linears = {p for p, m in modules.items() if isinstance(m, nn.Conv2d | nn.Linear)}
    assert {layer.path for layer in hypernet.layers} == convs_and_linears  # the classifier too
    classifier = [layer for layer in hypernet.layers if layer.linear]
    assert len(classifier) == 1 and classifier[0].out_layout == ((None, 10),)
    assert layout_groups(classifier[0].in_layout)


def positions(layout, keep, repeat=1):
    """The kept rows of a dimension laid out as `layout`: each run's kept channels at the run's offset."""
    kept, offset = [], 0
    for name, count in layout:
        kept += [offset + i for i in (keep[name] if name is not None else range(count))]
        offset += count
    return [c * repeat + r for c in kept for r in range(repeat)]


def test_every_latent_gets_a_gradient(pair):
    hypernet, _, _ = pair
    hypernet.train()
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 10
    loss = nn.functional.cross_entropy(hypernet(x), y)
    grads = torch.autograd.grad(loss, list(hypernet.latents.values()))
    for name, grad in zip(hypernet.latents, grads, strict=True):
        assert grad.shape == (hypernet.widths[name],)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_shrunk_kernels_equal_the_kept_slices_exactly(pair):
    hypernet, shrunk, keep = pair
    assert dict(shrunk.widths) == {name: len(keep[name]) for name in keep}
    wide, small = hypernet.kernels(), shrunk.kernels()
    for layer in hypernet.layers:
        expected = wide[layer.path][positions(layer.out_layout, keep)]
        if not layer.depthwise:
            expected = expected[:, positions(layer.in_layout, keep, layer.in_repeat)]
        assert torch.equal(small[layer.path], expected), layer.path


def test_zeroed_latents_behave_like_the_shrunk_network(pair):
    """Nullifying a latent element removes its channel everywhere: conv rows/columns and the masked BN."""
    hypernet, shrunk, keep = pair
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        saved = {name: z.detach().clone() for name, z in hypernet.latents.items()}
        try:
            for name, z in hypernet.latents.items():
                mask = torch.zeros_like(z)
                mask[keep[name]] = 1
                z.mul_(mask)
            wide = hypernet.eval()(x)
        finally:
            for name, z in hypernet.latents.items():
                z.copy_(saved[name])
        small = shrunk.eval()(x)
    torch.testing.assert_close(wide, small, rtol=1e-3, atol=1e-4 * float(small.abs().max()))


def test_generated_state_dict_loads_strictly_and_gives_the_same_logits(pair):
    """Eval mode: BN uses the carrier's running statistics (never updated: 0 and 1), carried over."""
    _, shrunk, _ = pair
    model = materialize(shrunk.spec, shrunk.widths)
    model.load_state_dict(shrunk.state_dict(), strict=True)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), shrunk.eval()(x))


def test_forward_leaves_the_running_statistics_alone():
    hypernet = reparameterize("resnet_cifar:depth=8", m=2, seed=0).train()
    before = {k: v.clone() for k, v in hypernet.model.state_dict().items()}
    hypernet(torch.randn(4, 3, 8, 8))
    after = hypernet.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_initialisation_is_kaiming_fan_in_and_seeded():
    spec = "vgg_cifar:depth=11,width=0.25"
    hypernet = reparameterize(spec, m=8, seed=0)
    layer = next(layer for layer in hypernet.layers if layer.path == "features.18")  # 128 x 128 x 3 x 3
    kernel = hypernet.kernel(layer)
    expected = (2 / (layer.cols * layer.kernel)) ** 0.5
    assert abs(kernel.std().item() / expected - 1) < 0.15
    again = reparameterize(spec, m=8, seed=0)
    other = reparameterize(spec, m=8, seed=1)
    assert torch.equal(again.kernel(layer), kernel) and not torch.equal(other.kernel(layer), kernel)
    assert hypernet.m == 8 and hypernet.w2[layer.path].shape == (8, 128, 128, 9)


def test_bad_shrink_and_embedding_size_are_errors():
    hypernet = reparameterize("resnet_cifar:depth=8", m=1, seed=0)
    with pytest.raises(HypernetError, match="unknown groups nope"):
        shrink(hypernet, {"nope": [0]})
    with pytest.raises(HypernetError, match=r"stage1\.stream"):
        shrink(hypernet, {"stage1.stream": [0, 99]})
    with pytest.raises(HypernetError, match="embedding size"):
        reparameterize("resnet_cifar:depth=8", m=0)


def test_a_concatenated_input_reads_its_groups_latents_end_to_end():
    hypernet = reparameterize("densenet_cifar:depth=10,growth=4,resolution=16", m=2, seed=0)
    layer = next(layer for layer in hypernet.layers if layer.path == "trans1.conv")
    assert layer.in_layout == (("stem", 8), ("stage1.block1.growth", 4), ("stage1.block2.growth", 4))
    latents = [hypernet.latents[name] for name, _ in layer.in_layout]
    with torch.no_grad():
        z_in = torch.cat(latents)
        grid = hypernet.latents["stage1.transition"][:, None] * z_in[None, :]
        expected = sum(
            (grid * hypernet.w1[layer.path][k])[..., None] * hypernet.w2[layer.path][k] for k in range(2)
        )
        torch.testing.assert_close(hypernet.kernel(layer), expected.reshape(layer.shape))
    assert torch.equal(hypernet.mask(hypernet.norms["trans1.bn"]), (z_in != 0).float())


def test_a_selection_of_a_dropped_stream_channel_cannot_be_shrunk():
    hypernet = reparameterize("preresnet_cifar:depth=11,resolution=16", m=1, seed=0)
    with pytest.raises(HypernetError, match=r"layer1\.0\.select: selects channels \[0\]"):
        shrink(hypernet, {"stem": list(range(1, 16))})
