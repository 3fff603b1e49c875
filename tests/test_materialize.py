"""materialize: fresh, randomly initialised models at any widths, smaller or larger than the base."""

import pytest
import torch
from torch import nn

from widthtune.models import Widths, channel_space, input_shape, materialize


@pytest.mark.parametrize(
    "spec",
    [
        "resnet_cifar:depth=8",
        "vgg_cifar:depth=11",
        "mobilenet_v2:width=0.35",
        "resnet:depth=18,resolution=32,num_classes=7",
        "repvgg:variant=A0,stem=cifar,width=0.25,resolution=32,num_classes=10",
        "torchvision:efficientnet_b0,resolution=32",
    ],
)
@pytest.mark.parametrize("multiplier", [0.5, 1.5])
def test_materialized_model_has_the_widths_and_runs(spec, multiplier):
    space = channel_space(spec)
    widths = Widths.base(space).scale(multiplier)
    model = materialize(spec, widths, seed=0)
    modules = dict(model.named_modules())
    for group, width in zip(space, widths.values, strict=True):
        for member in group.members:
            module = modules[member.path]
            if isinstance(module, nn.Conv2d) and member.kind == "out":
                assert module.out_channels == width
            if isinstance(module, nn.BatchNorm2d):
                assert module.num_features == width
    out = model(torch.randn(input_shape(spec, batch=2)))
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_materialize_is_fresh_and_seeded():
    spec = "torchvision:resnet18,resolution=32"
    widths = Widths.base(channel_space(spec)).scale(0.5)
    a, b, c = (materialize(spec, widths, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_resized_layers_keep_the_base_initialisation_statistics():
    spec = "torchvision:resnet18,resolution=32"
    base = materialize(spec, seed=0)
    wide = materialize(spec, Widths.base(channel_space(spec)).scale(2.0), seed=0)
    # kaiming fan-out: std scales with 1/sqrt(out channels)
    ratio = (wide.layer2[0].conv1.weight.std() / base.layer2[0].conv1.weight.std()).item()
    assert ratio == pytest.approx(2**-0.5, rel=0.05)
    assert torch.all(wide.layer2[0].bn1.weight == 1) and torch.all(wide.layer2[0].bn1.bias == 0)
    assert wide.layer2[0].bn1.running_var.shape == (256,)


def test_generic_base_model_keeps_the_factory_initialisation():
    import torchvision

    spec = "torchvision:resnet18,resolution=32,num_classes=10"
    torch.manual_seed(5)
    reference = torchvision.models.resnet18(num_classes=10)
    ours = materialize(spec, seed=5)
    assert torch.equal(ours.fc.weight, reference.fc.weight)  # default uniform init, untouched at the base
    assert torch.equal(ours.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)


def test_generic_model_that_cannot_run_on_its_input_is_a_spec_error():
    from widthtune.models import SpecError, channel_space

    with pytest.raises(SpecError, match="does not run on input"):
        channel_space("torchvision:resnet18,in_channels=1,resolution=32")
