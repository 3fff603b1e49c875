"""RepVGG: merged models compute what the training form computes, and `flops` prices the merged network."""

import json
import random

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from widthtune.cli import app
from widthtune.models import SpecError, Widths, channel_space, deploy, input_shape, materialize
from widthtune.models.artifact import make_artifact
from widthtune.models.cost import CostModel
from widthtune.models.export import export_model
from widthtune.models.repvgg import DeployedBlock, RepVGGBlock, reparameterize

# The RepVGG paper's Table 2, written out here so the count below is independent of the module:
# variant -> (blocks in stages 0..4, a, b, params in millions, GMACs).
PAPER = {
    "A0": ((1, 2, 4, 14, 1), 0.75, 2.5, 8.30, 1.4),
    "A1": ((1, 2, 4, 14, 1), 1.0, 2.5, 12.78, 2.4),
    "A2": ((1, 2, 4, 14, 1), 1.5, 2.75, 25.49, 5.1),
    "B0": ((1, 4, 6, 16, 1), 1.0, 2.5, 14.33, 3.1),
    "B1": ((1, 4, 6, 16, 1), 2.0, 4.0, 51.82, 11.8),
    "B2": ((1, 4, 6, 16, 1), 2.5, 5.0, 80.31, 18.4),
    "B3": ((1, 4, 6, 16, 1), 3.0, 5.0, 110.96, 26.2),
}
TINY = "stem={stem},resolution=32,num_classes=7,width={width}"
# Building a 50-110M-parameter training form and merging it takes seconds each: B1-B3 at full size are slow.
FULL_SIZE = [v if v in ("A0", "A1", "A2", "B0") else pytest.param(v, marks=pytest.mark.slow) for v in PAPER]


def deployed_count(
    variant: str, resolution: int = 224, num_classes: int = 1000, stem: str = "imagenet"
) -> dict[str, int]:
    """By hand: 3x3 convs with bias (padding 1; stride 2 opening each stage, but stages 0-1 on CIFAR), pool, linear."""
    blocks, a, b, _, _ = PAPER[variant]
    first_strides = (1, 1, 2, 2, 2) if stem == "cifar" else (2, 2, 2, 2, 2)
    widths = (min(64, int(64 * a)), int(64 * a), int(128 * a), int(256 * a), int(512 * b))
    macs = params = 0
    channels, size = 3, resolution
    for count, width, first_stride in zip(blocks, widths, first_strides, strict=True):
        for index in range(count):
            size = (size + 2 - 3) // (first_stride if index == 0 else 1) + 1
            macs += 9 * channels * width * size * size
            params += 9 * channels * width + width
            channels = width
    macs += channels * num_classes
    params += channels * num_classes + num_classes
    return {"macs": macs, "params": params}


def randomize_norms(model: nn.Module, seed: int) -> nn.Module:
    """BN statistics and affines as after training, so every branch's fold is exercised."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)
    return model


def assert_merged_matches(spec: str, widths: Widths | None = None) -> nn.Module:
    model = randomize_norms(materialize(spec, widths, seed=0), seed=1).double().eval()
    merged = reparameterize(model)
    x = torch.randn(
        input_shape(spec, batch=2), dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        expected, got = model(x), merged(x)
    assert not any(isinstance(m, nn.BatchNorm2d | RepVGGBlock) for m in merged.modules())
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())
    return model


@pytest.mark.parametrize("variant", list(PAPER))
@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_merged_logits_equal_the_training_form_for_every_configuration(variant, stem):
    width = 0.25 if variant.startswith("B") else 0.5
    assert_merged_matches(f"repvgg:variant={variant}," + TINY.format(stem=stem, width=width))


def test_merge_in_float32_is_within_float_tolerance():
    spec = "repvgg:variant=A0," + TINY.format(stem="cifar", width=1.0)
    model = randomize_norms(materialize(spec, seed=0), seed=3).eval()
    x = torch.randn(input_shape(spec, batch=2))
    with torch.no_grad():
        expected, got = model(x), reparameterize(model)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize(
    ("low", "high"), [(0.3, 0.9), (1.1, 1.8), (0.4, 1.7)], ids=["shrunk", "grown", "mixed"]
)
def test_merged_logits_equal_the_training_form_at_other_widths(low, high):
    spec = "repvgg:variant=A1," + TINY.format(stem="cifar", width=0.25)
    space = channel_space(spec)
    rng = random.Random(f"{low}{high}")
    widths = Widths.from_mapping(space, {g.name: g.base * rng.uniform(low, high) for g in space}, round=True)
    model = assert_merged_matches(spec, widths)
    mismatched = [
        m
        for m in model.modules()
        if isinstance(m, RepVGGBlock)
        and m.bn_identity is not None
        and m.conv.in_channels != m.conv.out_channels
    ]
    assert mismatched  # identity branches routing by position between unequal widths are merged too


def test_identity_branches_follow_the_base_shapes_and_the_structure_ignores_widths():
    spec = "repvgg:variant=B0," + TINY.format(stem="imagenet", width=0.25)
    base = materialize(spec)
    blocks = [m for m in base.modules() if isinstance(m, RepVGGBlock)]
    # identity exactly where stride is 1 and the base widths agree: every block but each stage's first
    assert [m.bn_identity is not None for m in blocks] == [i not in (0, 1, 5, 11, 27) for i in range(28)]
    other = materialize(spec, Widths.from_ratios(channel_space(spec), 0.6))
    assert base.state_dict().keys() == other.state_dict().keys()


def test_every_block_is_its_own_group():
    spec = "repvgg:variant=A0"
    space = channel_space(spec)
    assert len(space) == 1 + 2 + 4 + 14 + 1
    assert space.names[:4] == ("stem", "stage1.block1", "stage1.block2", "stage2.block1")
    assert [g.base for g in space][:3] == [48, 48, 48] and space["stage4.block1"].base == 1280
    assert space.member_groups()[("classifier", "in")] == space.index("stage4.block1")
    assert space.member_groups()[("stage1.0.conv", "in")] == space.index("stem")


@pytest.mark.parametrize("variant", FULL_SIZE)
def test_flops_prices_the_deployed_network_exactly_and_near_the_paper(variant):
    result = CliRunner().invoke(app, ["flops", f"repvgg:variant={variant}", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    count = deployed_count(variant)
    assert (data["macs"], data["params"]) == (count["macs"], count["params"])
    *_, paper_params, paper_gmacs = PAPER[variant]
    assert round(data["macs"] / 1e9, 1) == paper_gmacs
    # the paper's params are the merged network's, biases included, cut (not rounded) to 10k
    assert data["params"] // 10_000 == round(paper_params * 100)


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_cost_model_equals_flop_counter_and_parameters_of_the_merged_model_at_any_widths(stem):
    spec = "repvgg:variant=A0," + TINY.format(stem=stem, width=0.5)
    cost_model = CostModel.from_spec(spec)
    rng = random.Random(stem)
    space = cost_model.space
    assert space == channel_space(spec)
    widths = Widths.from_mapping(space, {g.name: g.base * rng.uniform(0.3, 1.8) for g in space}, round=True)
    merged = deploy(spec, materialize(spec, widths, seed=0)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        merged(torch.zeros(input_shape(spec)))
    cost = cost_model.evaluate(widths)
    assert cost.macs == counter.get_total_flops() // 2
    assert cost.params == sum(p.numel() for p in merged.parameters())
    relus = sum(m.conv.out_channels for m in merged.modules() if isinstance(m, DeployedBlock))
    assert cost.lwdna > cost.macs and relus > 0  # ReLU outputs only: the merged model has no BN


@pytest.mark.parametrize("variant", ["A0", "B0"])
@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_small_inputs_are_priced_exactly_on_both_stems(variant, stem):
    spec = f"repvgg:variant={variant},stem={stem},resolution=32,num_classes=10"
    cost = CostModel.from_spec(spec).base()
    count = deployed_count(variant, resolution=32, num_classes=10, stem=stem)
    assert (cost.macs, cost.params) == (count["macs"], count["params"])


def test_reparameterize_is_idempotent_and_refuses_other_models():
    spec = "repvgg:variant=A0," + TINY.format(stem="cifar", width=0.25)
    merged = reparameterize(materialize(spec))
    again = reparameterize(merged)
    assert again is not merged and again.state_dict().keys() == merged.state_dict().keys()
    with pytest.raises(ValueError, match="no RepVGG blocks"):
        reparameterize(nn.Sequential(nn.Conv2d(3, 4, 3)))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("repvgg:variant=C1", "variant='C1'; choose one of A0, A1, A2, B0, B1, B2, B3"),
        ("repvgg:stem=tiny", "stem='tiny'; choose one of imagenet, cifar"),
        ("repvgg:depth=3", "unknown option 'depth'"),
        ("repvgg:width=0", "width=0 must be in"),
    ],
)
def test_bad_options_are_named(spec, message):
    with pytest.raises(SpecError, match=message):
        channel_space(spec)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_writes_the_merged_network(tmp_path):
    spec = "repvgg:variant=A0," + TINY.format(stem="cifar", width=0.25)
    widths = Widths.from_ratios(channel_space(spec), 0.75)
    path = export_model(make_artifact(spec, widths, method="test"), "torchscript", tmp_path / "a0.pt", seed=0)
    exported = torch.jit.load(str(path))
    assert not any("bn" in key for key in exported.state_dict())
    x = torch.randn(input_shape(spec, batch=2))
    with torch.no_grad():
        torch.testing.assert_close(exported(x), deploy(spec, materialize(spec, widths, seed=0)).eval()(x))
