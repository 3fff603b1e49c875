"""Pruning-as-Search: STE masks, the cost penalty, masks that prune exactly, and searches that land on the target."""

import pytest
import torch
from torch import nn

from widthtune.models.cost import CostModel
from widthtune.models.inherit import inherit_weights
from widthtune.models.mask_sites import mask_sites
from widthtune.models.registry import canonical_spec, channel_space, materialize
from widthtune.models.widths import Widths
from widthtune.trainables import pas
from widthtune.trainables.artifacts import ArtifactContext
from widthtune.trainables.registry import get_method
from widthtune.trainables.task import Task
from widthtune.training import DataSpec, TrainConfig, load_dataset

RESNET = "resnet:depth=18,width=0.125,resolution=16,num_classes=10"
RESNET_CIFAR = "resnet_cifar:depth=8,resolution=16,shortcut=C"
MOBILENET = "mobilenet_v2:width=0.35,resolution=16,divisor=1,min_width=1"
REPVGG = "repvgg:variant=A0,stem=cifar,width=0.0625,resolution=16,num_classes=10"
RECIPE = TrainConfig(epochs=2, batch_size=50, lr=0.05, device="cpu", augment="none")


@pytest.fixture(scope="module")
def shapes():
    return load_dataset(DataSpec(name="shapes", size=300, resolution=16))


def masked(spec, init=0.6, seed=0):
    net = materialize(spec, seed=seed).eval()
    space = channel_space(spec)
    return pas.MaskedNetwork(net, space, mask_sites(net, space), init, 0.5)


def make_task(spec, data, ratio=0.5, **params):
    cost_model = CostModel.from_spec(spec)
    return Task(
        model=canonical_spec(spec),
        data=data,
        train=RECIPE,
        cost_model=cost_model,
        cost_target=ratio * cost_model.base().macs,
        params=params,
        seed=0,
    )


def test_ste_gradient_equals_the_straight_through_definition():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1)
    x, upstream = torch.randn(2, 3, 5, 5), torch.randn(2, 6, 5, 5)
    values = torch.tensor([0.1, 0.49, 0.5, 0.51, 0.6, 0.9], requires_grad=True)
    features = conv(x)
    out = features * pas.binarize(values, 0.5).reshape(1, -1, 1, 1)
    (out * upstream).sum().backward()
    bits = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(out, features * bits.reshape(1, -1, 1, 1))  # forward: b = 1[v > 0.5]
    # backward: dL/dv = dL/db = sum over batch and positions of the upstream gradient x the unmasked features
    torch.testing.assert_close(values.grad, (upstream * features).sum(dim=(0, 2, 3)).detach())


@pytest.mark.parametrize("spec", [RESNET, RESNET_CIFAR, MOBILENET, REPVGG])
def test_masks_at_their_initial_value_keep_every_channel(spec):
    model = masked(spec)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        with_masks = model(x)
        torch.testing.assert_close(with_masks, masked(spec).remove()(x), rtol=0, atol=0)
    assert all(bool(b.all()) for b in model.bits().values())
    assert model.widths().tolist() == [float(g.base) for g in model.space]
    assert set(model.names) == set(model.space.names)


@pytest.mark.parametrize("spec", [RESNET, RESNET_CIFAR, MOBILENET])
def test_masked_network_computes_what_the_pruned_network_computes(spec):
    model = masked(spec)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for v in model.values:
            v.copy_(torch.rand(v.shape, generator=generator))
            v[0] = 1.0  # every group keeps a channel
    for module in model.net.modules():  # trained-looking statistics, so zeroed channels would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.3, generator=generator)
            module.bias.data.normal_(0, 0.3, generator=generator)
    kept = {name: tuple(int(i) for i in torch.nonzero(b).flatten()) for name, b in model.bits().items()}
    x = torch.randn(2, 3, 16, 16, generator=generator)
    with torch.no_grad():
        expected = model(x)
        net = model.remove()
        widths = Widths(model.space, tuple(len(kept[g.name]) for g in model.space))
        pruned = materialize(spec, widths)
        pruned.load_state_dict(inherit_weights(net, model.space, kept))
        torch.testing.assert_close(pruned.eval()(x), expected, rtol=1e-4, atol=1e-5)


def test_a_group_whose_masks_all_fall_below_the_threshold_keeps_its_minimum_channels():
    model = masked(RESNET).train()
    stream = model.names.index("stage1.stream")
    with torch.no_grad():
        model.values[stream].copy_(torch.linspace(0.1, 0.4, len(model.values[stream])))  # all below 0.5
    minimum = model.minimums[stream]
    assert minimum >= 1
    kept = model.bits()["stage1.stream"]
    assert int(kept.sum()) == minimum and bool(kept[-minimum:].all())  # the highest v kept
    assert model.widths()[model.space.index("stage1.stream")].item() == minimum


def test_repvgg_masks_sit_after_each_block_so_one_mask_prunes_every_branch():
    net = materialize(REPVGG)
    sites = mask_sites(net, channel_space(REPVGG))
    assert sites["stem"] == ("stage0",) and sites["stage1.block2"] == ("stage1.1",)
    assert all(len(paths) == 1 for paths in sites.values())


def test_a_residual_stream_shares_one_mask_across_its_writers():
    space = channel_space(RESNET)
    sites = mask_sites(materialize(RESNET), space)
    assert sites["stage1.stream"] == ("bn1", "layer1.0.bn2", "layer1.1.bn2")
    assert sites["stage2.stream"] == ("layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2")
    assert masked(RESNET).names == space.names  # one mask value vector per group


def test_zero_pad_streams_get_no_mask():
    spec = "resnet_cifar:depth=8,resolution=16,shortcut=A"
    model = pas.MaskedNetwork(
        materialize(spec),
        channel_space(spec),
        mask_sites(materialize(spec), channel_space(spec), exclude=frozenset({"stage1.stream"})),
        0.6,
        0.5,
    )
    assert "stage1.stream" not in model.names
    assert model.widths()[model.space.index("stage1.stream")].item() == model.space["stage1.stream"].base


def test_penalty_is_zero_at_the_target_and_its_gradient_pushes_the_cost_toward_it():
    cost_model = CostModel.from_spec(RESNET)
    base = float(cost_model.base().macs)
    model = masked(RESNET)
    at_target = pas.cost_penalty(cost_model, base, beta=5, unit=1e6)(model)
    at_target.backward()
    assert at_target.item() == 0.0
    assert all(float(v.grad.abs().max()) == 0.0 for v in model.values)

    model = masked(RESNET)
    pas.cost_penalty(cost_model, 0.5 * base, beta=5, unit=1e6)(model).backward()
    assert all(bool((v.grad > 0).all()) for v in model.values)  # descent lowers v: fewer channels, lower cost

    model = masked(RESNET)
    with torch.no_grad():
        for v in model.values:
            v[: len(v) // 2] = 0.4  # half the channels off: the cost is well below the base
    pas.cost_penalty(cost_model, base, beta=5, unit=1e6)(model).backward()
    assert all(bool((v.grad < 0).all()) for v in model.values)  # descent raises v back toward the target
    # the penalty is beta x (cost error in units)^2
    cost = float(cost_model.cost_tensor(model.widths().detach().double()))
    penalty = pas.cost_penalty(cost_model, base, beta=5, unit=1e6)(model).item()
    assert penalty == pytest.approx(5 * ((cost - base) / 1e6) ** 2, rel=1e-5)


def test_frozen_widths_are_the_mask_sums_near_the_target_and_nudged_by_mask_value_otherwise():
    cost_model = CostModel.from_spec(RESNET)
    space = cost_model.space
    generator = torch.Generator().manual_seed(3)
    scores = {g.name: torch.rand(g.base, generator=generator) for g in space}
    bits = {name: s > 0.5 for name, s in scores.items()}
    sums = tuple(max(1, int(b.sum())) for b in bits.values())
    at_masks = float(cost_model.cost(Widths(space, sums)))
    widths, kept, raw = pas.frozen_widths(scores, bits, cost_model, at_masks * 1.005)
    assert widths == raw and widths.values == sums  # within 1%: the mask sums themselves
    assert all(set(kept[n]) == set(torch.nonzero(bits[n]).flatten().tolist()) for n in space.names)

    target = 0.7 * at_masks
    widths, kept, raw = pas.frozen_widths(scores, bits, cost_model, target, refined_tolerance=0.005)
    assert raw.values == sums
    assert abs(cost_model.cost(widths) - target) <= 0.005 * target
    for name in space.names:  # the channels kept are the highest-v ones
        assert len(kept[name]) == widths[name]
        dropped = set(range(space[name].base)) - set(kept[name])
        if dropped and kept[name]:
            assert max(scores[name][list(dropped)]) <= min(scores[name][list(kept[name])])


def test_beta_defaults_by_family():
    assert pas.default_beta(RESNET) == 5.0
    assert pas.default_beta(MOBILENET) == 5.0
    assert pas.default_beta(REPVGG) == 0.1


def test_the_method_declares_a_shared_trained_baseline():
    context = ArtifactContext(model=RESNET, data={"name": "shapes"}, train={"epochs": 30, "lr": 0.1}, seed=1)
    method = get_method("pas")
    assert method.keeps_weights and method.prunes and method.widest({}) == 1.0
    recipe = method.artifacts({}, context)["baseline"]
    assert recipe.kind == "trained-model" and recipe.recipe["train"] == {"epochs": 30, "lr": 0.1}
    assert recipe.seed == 1 and recipe.recipe["multiplier"] == 1.0
    assert method.artifacts({"pretrain_epochs": 5}, context)["baseline"].recipe["train"]["epochs"] == 5
    assert method.artifacts({"pretrain_epochs": 0}, context) == {}


@pytest.mark.parametrize(
    "params, field",
    [
        ({"beta": 0}, "method.beta"),
        ({"beta": "five"}, "method.beta"),
        ({"search_epochs": 0}, "method.search_epochs"),
        ({"search_epochs": 2.5}, "method.search_epochs"),
        ({"pretrain_epochs": -1}, "method.pretrain_epochs"),
        ({"init": 0.4}, "method.init"),
        ({"threshold": float("nan")}, "method.threshold"),
        ({"cost_unit": 0}, "method.cost_unit"),
        ({"cost_unit": True}, "method.cost_unit"),
    ],
)
def test_bad_hyperparameters_are_named_in_one_line(params, field):
    with pytest.raises(ValueError, match=f"^{field}: ") as error:
        pas.check(params)
    assert "\n" not in str(error.value)


def test_a_search_without_a_cost_target_is_refused(shapes):
    task = make_task(RESNET_CIFAR, shapes, pretrain_epochs=0, search_epochs=1)
    task = Task(**{**task.__dict__, "cost_target": None})
    with pytest.raises(ValueError, match=r"^cost_target: "):
        pas.search(task)


def check_result(spec, result, task):
    info = result.info
    assert abs(info["cost_error"]) <= 0.01
    assert info["cost"] == pytest.approx(float(task.cost_model.cost(result.widths)))
    assert info["mask_cost"] < task.cost_model.base().macs  # the masks themselves pruned
    assert all(len(info["kept"][g.name]) == result.widths[g.name] for g in task.space)
    model = materialize(spec, result.widths)
    model.load_state_dict(result.weights)  # the kept weights fit the found widths
    assert result.search_flops > 0 and not result.match_target


def test_pas_on_a_tiny_resnet_lands_within_one_percent_of_the_target(shapes, tmp_path):
    baseline = materialize(RESNET, seed=0)
    torch.save(baseline.state_dict(), tmp_path / "model.pt")
    task = make_task(RESNET, shapes, ratio=0.6, search_epochs=2, cost_unit=1e5, beta=5)
    # from an untrained baseline the penalty empties stage1.stream's masks within a step: the search must
    # keep its minimum (an emptied stream diverged to NaN at this lr)
    task = Task(**{**task.__dict__, "artifacts": {"baseline": str(tmp_path / "model.pt")}})
    result = pas.search(task)
    check_result(RESNET, result, task)
    assert result.info["baseline"] == str(tmp_path / "model.pt") and result.info["pretrain_images"] == 0
    assert len(result.info["search_cost_by_epoch"]) == 2


@pytest.mark.slow
def test_pas_on_a_tiny_repvgg_lands_within_one_percent_of_the_target(shapes):
    task = make_task(REPVGG, shapes, ratio=0.6, pretrain_epochs=1, search_epochs=1, cost_unit=1e5, beta=2)
    result = pas.search(task)
    check_result(REPVGG, result, task)
    assert result.info["pretrain_images"] == len(shapes.train_y)


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_pas_through_the_platform_starts_from_one_shared_baseline_and_fine_tunes_its_kept_weights(tmp_path):
    from widthtune.platform.config import validate_config
    from widthtune.platform.runner import run_experiment
    from widthtune.results.store import read_trials

    config = {
        "name": "pas",
        "kind": "compare",
        "model": RESNET_CIFAR,
        "data": {"name": "shapes", "size": 200, "resolution": 16},
        "train": {"epochs": 1, "batch_size": 50, "lr": 0.05, "augment": "none"},
        "cost_target": {"ratio": 0.5},
        "methods": [
            {
                "name": "pas",
                "search_epochs": 1,
                "cost_unit": 1e6,
                "retrain": {"mode": {"grid": ["finetune", "scratch-e"]}},
            },
            "uniform",
        ],
        "storage": str(tmp_path),
        "max_failures": 0,
    }
    directory = run_experiment(validate_config(config), say=lambda line: None)
    rows = read_trials(directory / "results")
    assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    (baseline,) = [r for r in rows if r["role"] == "artifact"]
    found = {r["retrain"]: r for r in rows if r["label"] == "pas"}
    assert (
        set(found) == {"finetune", "scratch-e"}
        and found["finetune"]["widths"] == found["scratch-e"]["widths"]
    )
    (uniform,) = [r for r in rows if r["label"] == "uniform"]
    for row in (*found.values(), uniform):
        assert abs(row["macs"] - row["cost_target"]) <= 0.01 * row["cost_target"]
    assert len(list((directory / "artifacts").iterdir())) == 1 and baseline["status"] == "completed"
