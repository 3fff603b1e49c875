"""`lwdna` as a plain `search(task)`: cost met to 0.1%, floors, coupled groups, generated init, params."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from widthtune.models.cost import CostModel
from widthtune.models.hypernet import reparameterize, shrink
from widthtune.models.inherit import Slice
from widthtune.models.registry import canonical_spec, materialize
from widthtune.models.widths import Widths
from widthtune.trainables import lwdna
from widthtune.trainables.task import Task
from widthtune.training import DataSpec, TrainConfig, load_dataset

RESNET = "resnet_cifar:depth=8"
VGG = "vgg_cifar:depth=11,width=0.25"
MOBILENET = "mobilenet_v2:width=0.25"
DENSENET = "densenet_cifar:depth=10,growth=4,resolution=16"  # concatenated inputs
PRERESNET = "preresnet_cifar:depth=11,select=false,resolution=16"
SELECTING = (
    "preresnet_cifar:depth=11,resolution=16"  # a channel selection in front of each BN that reads a stream
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataSpec("digits", resolution=16))


@pytest.fixture(scope="module")
def cost_models():
    return {
        spec: CostModel.from_spec(spec)
        for spec in (RESNET, VGG, MOBILENET, DENSENET, PRERESNET, SELECTING, "resnet_cifar:depth=14")
    }


def make_task(data, cost_models, spec, fraction=0.5, convention="macs", seed=0, **params):
    cost_model = cost_models[spec]
    base = cost_model.cost(Widths.base(cost_model.space), convention)
    return Task(
        model=canonical_spec(spec),
        data=data,
        train=TrainConfig(epochs=1, batch_size=64, device="cpu"),
        cost_model=cost_model,
        cost_target=None if fraction is None else fraction * base,
        convention=convention,
        params=params,
        seed=seed,
    )


@pytest.mark.parametrize("convention", ["macs", "lwdna"])
@pytest.mark.parametrize(
    ("spec", "fraction"),
    [
        (RESNET, 0.3),
        (RESNET, 0.5),
        (RESNET, 0.7),
        (VGG, 0.3),
        (VGG, 0.7),
        (MOBILENET, 0.5),
        (MOBILENET, 0.8),
        (DENSENET, 0.5),
        (PRERESNET, 0.5),
    ],
)
def test_cost_target_is_met_within_a_tenth_of_a_percent(data, cost_models, spec, fraction, convention):
    task = make_task(data, cost_models, spec, fraction, convention, m=2)  # m does not change the widths' cost
    result = lwdna.search(task)
    cost = task.cost_model.cost(result.widths, convention)
    assert abs(cost - task.cost_target) <= 0.001 * task.cost_target
    assert result.match_target is False and result.weights is None
    assert math.isclose(result.info["cost"], cost) and abs(result.info["relative_error"]) <= 0.001


def test_kept_channels_are_the_best_scoring_and_match_the_widths(data, cost_models):
    task = make_task(data, cost_models, RESNET, 0.5)
    result = lwdna.search(task)
    kept = result.info["kept"]
    assert {name: len(indices) for name, indices in kept.items()} == result.widths.as_dict()
    widened = Widths.base(task.space).scale(2.0)
    hypernet = reparameterize(task.model, widened, m=8, seed=task.seed)
    scores = lwdna.latent_scores(hypernet, task.data, 64, 1, task.seed)
    for name, indices in kept.items():
        assert indices == sorted(indices) and len(set(indices)) == len(indices)
        dropped = sorted(set(range(widened[name])) - set(indices))
        if dropped:
            assert scores[name][indices].min() >= scores[name][dropped].max()


@pytest.mark.parametrize("reference", ["base", "widened"])
def test_floors_hold_for_conv_groups_and_the_classifier_input(data, cost_models, reference):
    rho, tau, fraction = (0.6, 0.7, 0.5) if reference == "base" else (0.35, 0.45, 0.6)
    task = make_task(data, cost_models, VGG, fraction, rho=rho, tau=tau, floor_reference=reference, m=2)
    result = lwdna.search(task)
    assert result.info["classifier_inputs"] == ["conv8"]
    widened = Widths.base(task.space).scale(2.0)
    at_floor = 0
    for group in task.space:
        ref = group.base if reference == "base" else widened[group.name]
        fraction = tau if group.name == "conv8" else rho
        assert result.widths[group.name] >= math.ceil(fraction * ref)
        assert result.info["floors"][group.name] == math.ceil(fraction * ref - 1e-9)
        at_floor += result.widths[group.name] == result.info["floors"][group.name]
    assert at_floor >= 1  # the floors bind at this target


def test_coupled_groups_shrink_together(data, cost_models):
    spec = "resnet_cifar:depth=14"  # two blocks per stage, all adding into the stage's stream
    result = lwdna.search(make_task(data, cost_models, spec, 0.5, m=2))
    widths = result.widths
    model = materialize(spec, widths)
    assert model.conv1.out_channels == widths["stage1.stream"]
    for s in (1, 2, 3):
        stream = widths[f"stage{s}.stream"]
        for b, block in enumerate(getattr(model, f"layer{s}")):
            assert block.conv2.out_channels == block.bn2.num_features == stream
            assert block.conv1.out_channels == widths[f"stage{s}.block{b + 1}.mid"]
        if s > 1:
            assert getattr(model, f"layer{s}")[0].downsample[0].out_channels == stream
    assert model.fc.in_features == widths["stage3.stream"]


def test_result_is_non_uniform_on_digits(data, cost_models):
    result = lwdna.search(make_task(data, cost_models, RESNET, 0.5))
    ratios = result.info["ratios"]
    assert max(ratios.values()) - min(ratios.values()) > 0.2
    assert max(ratios.values()) > 1.0  # some groups grow beyond the base: the point of widening first


@pytest.mark.parametrize("spec", [MOBILENET, DENSENET, PRERESNET])
def test_hypernet_init_weights_load_strictly_and_reproduce_the_shrunk_hypernetwork(data, cost_models, spec):
    """Eval mode on both sides: BN uses the carried running statistics (the initial 0 and 1)."""
    task = make_task(data, cost_models, spec, 0.6, init="hypernet", m=4)
    result = lwdna.search(task)
    model = materialize(task.model, result.widths)
    model.load_state_dict(result.weights, strict=True)
    widened = Widths.base(task.space).scale(2.0)
    shrunk = shrink(reparameterize(task.model, widened, m=4, seed=task.seed), result.info["kept"])
    assert shrunk.widths == result.widths
    x = data.test_x[:16]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), shrunk.eval()(x))


def test_kept_selections_read_only_kept_channels_and_keep_their_width():
    scores = {"stream": np.array([5.0, 4, 3, 2, 1, 0]), "select": np.array([0.0, 9, 8, 7, 6, 5])}
    kept = {"stream": [0, 1, 2, 4], "select": [1, 2, 3]}
    reads = {
        "select": (Slice((("stream", 6),)), (0, 1, 2, 3, 4, 5))
    }  # select channel i reads stream channel i
    assert lwdna.readable(kept, scores, reads) == {"stream": [0, 1, 2, 4], "select": [1, 2, 4]}


def test_a_selection_wider_than_what_it_reads_is_refused_with_what_to_build(data, cost_models):
    with pytest.raises(ValueError, match=r"head\.select keeps .*\(select=false\)"):
        lwdna.search(make_task(data, cost_models, SELECTING, 0.5, m=2))


def test_search_flops_info_and_determinism(data, cost_models):
    task = make_task(data, cost_models, RESNET, 0.5, batches=2)
    result = lwdna.search(task)
    widened = Widths.base(task.space).scale(2.0)
    assert result.search_flops == pytest.approx(3 * 2 * task.cost_model.cost(widened, "macs") * 64 * 2)
    info = json.loads(json.dumps(result.info))
    assert {"beta", "rho", "tau", "m", "batches", "threshold", "kept", "ratios"} <= set(info)
    assert info["beta"] == 2.0 and info["rho"] == 0.4 and info["tau"] == 0.45 and info["m"] == 8
    assert lwdna.search(task).widths == result.widths
    assert lwdna.search(replace(task, seed=5)).info["kept"] != result.info["kept"]


def test_no_target_means_the_base_models_cost(data, cost_models):
    task = make_task(data, cost_models, RESNET, None, convention="lwdna", m=2)
    result = lwdna.search(task)
    base = task.cost_model.cost(Widths.base(task.space), "lwdna")
    assert abs(task.cost_model.cost(result.widths, "lwdna") - base) <= 0.001 * base
    assert result.info["cost_target"] == pytest.approx(base)


def test_ratio_reference_widened_reads_the_ratio_of_the_widened_net(data, cost_models):
    spec = "resnet_cifar:depth=14"
    task = make_task(data, cost_models, spec, 0.23, m=2, ratio_reference="widened")
    task = replace(task, trial_params={"cost_target.ratio": 0.23})
    result = lwdna.search(task)
    widened = task.cost_model.cost(Widths.base(task.space).scale(2.0))
    base = task.cost_model.cost(Widths.base(task.space))
    assert result.info["cost_target"] == pytest.approx(0.23 * widened)
    assert 0.88 < task.cost_model.cost(result.widths) / base < 0.95  # x2 widens the cost ~4x: 0.23 ~ 0.92
    with pytest.raises(ValueError, match=r"method.ratio_reference: 'widened' reads cost_target.ratio"):
        lwdna.search(replace(task, trial_params={"cost_target.macs": 1e6}))


@pytest.mark.parametrize("fraction", [0.05, 5.0])
def test_unreachable_target_names_cost_target_and_the_range(data, cost_models, fraction):
    with pytest.raises(ValueError, match=r"cost_target.*reachable range is [\d,]+ to [\d,]+"):
        lwdna.search(make_task(data, cost_models, RESNET, fraction, m=2))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("beta", 0),
        ("beta", "wide"),
        ("rho", 1.5),
        ("tau", -0.1),
        ("m", 0),
        ("m", 2.5),
        ("batches", 0),
        ("floor_reference", "paper"),
        ("init", "pretrained"),
        ("ratio_reference", "teacher"),
        ("tolerance", 0),
    ],
)
def test_bad_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"method\.{field}: .* is not allowed"):
        lwdna.check({field: value})


def test_defaults_are_the_papers():
    lwdna.check({})
    assert lwdna.DEFAULTS["beta"] == 2.0 and lwdna.DEFAULTS["m"] == 8
    assert (lwdna.DEFAULTS["rho"], lwdna.DEFAULTS["tau"]) == (0.4, 0.45)
    assert lwdna.METHOD.name == "lwdna" and lwdna.METHOD.check is lwdna.check
