"""AutoSlim: the sandwich rule's update, the supernet trained once and resumed, greedy slimming in one pass."""

import copy
import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from widthtune.models.cost import CostModel
from widthtune.models.registry import canonical_spec, channel_space
from widthtune.models.supernet import Supernet
from widthtune.models.widths import Widths
from widthtune.trainables.adapter import find_widths
from widthtune.trainables.artifacts import ArtifactContext
from widthtune.trainables.autoslim import check, slim, steps
from widthtune.trainables.supernet_training import (
    CHECKPOINT_FILE,
    SUPERNET_FILE,
    Scorer,
    calibration_batches,
    held_out,
    load_supernet,
    rule_step,
    supernet_recipe,
    train_supernet,
)
from widthtune.trainables.task import Task
from widthtune.training import DataSpec, TrainConfig, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = "resnet_cifar:depth=8,width=0.5,resolution=8"
DATA = {"name": "digits", "resolution": 8, "fraction": 0.1}
TRAIN = {"batch_size": 32, "lr": 0.05, "augment": "none", "device": "cpu"}


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataSpec(**DATA))


def plain_sgd(supernet):
    return torch.optim.SGD(supernet.parameters(), lr=1.0, momentum=0.0, weight_decay=0.0)


def test_the_sandwich_step_sums_labels_on_the_largest_and_its_soft_targets_on_the_rest(data):
    space = channel_space(SPEC)
    supernet = Supernet(SPEC, Widths.base(space).scale(1.5), seed=0).train()
    reference = copy.deepcopy(supernet)
    x, y = data.train_x[:16], data.train_y[:16]
    cost_model = CostModel.from_spec(SPEC)
    loss, flops = rule_step(
        supernet, plain_sgd(supernet), x, y, np.random.default_rng(3), "sandwich", {"n": 2}, cost_model, 0.1
    )
    chosen = reference.sandwich(2, np.random.default_rng(3))
    assert chosen[0] == reference.max_widths and chosen[1] == reference.min_widths and len(chosen) == 4
    logits = reference(x, chosen[0])
    total = F.cross_entropy(logits, y, label_smoothing=0.1)
    soft = logits.detach().softmax(1)
    for widths in chosen[1:]:
        total = total - (soft * F.log_softmax(reference(x, widths), 1)).sum(1).mean()
    total.backward()
    for (name, after), before in zip(supernet.named_parameters(), reference.parameters(), strict=True):
        expected = before.detach() - (before.grad if before.grad is not None else 0)
        assert torch.allclose(after, expected, atol=1e-5), name
    assert float(loss) == pytest.approx(
        float(F.cross_entropy(logits.detach(), y, label_smoothing=0.1)), rel=1e-5
    )
    assert flops == pytest.approx(6 * 16 * sum(cost_model.cost(w, "macs") for w in chosen))


def tiny_recipe(epochs, rule="sandwich", settings=None, seed=0):
    context = ArtifactContext(SPEC, DATA, TRAIN, seed)
    return supernet_recipe(context, multiplier=1.5, rule=rule, settings=settings or {"n": 2}, epochs=epochs)


KILLED_RUN = """
import sys, torch
torch.set_num_threads(1)
from widthtune.trainables.artifacts import ArtifactRecipe
from widthtune.trainables.supernet_training import train_supernet
import json
train_supernet(ArtifactRecipe.from_dict(json.loads(sys.argv[1])), sys.argv[2])
"""


@pytest.mark.slow
def test_supernet_training_resumes_after_a_kill_to_the_same_weights(tmp_path, data):
    recipe = tiny_recipe(epochs=3)
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED_RUN), json.dumps(recipe.as_dict()), str(killed)]
    )
    deadline = time.time() + 300
    while not (killed / CHECKPOINT_FILE).is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert not (killed / SUPERNET_FILE).is_file()
    resumed = train_supernet(recipe, killed)
    straight = train_supernet(recipe, tmp_path / "straight")
    assert (resumed.starts, resumed.resumes, straight.resumes) == (1, 1, 0)
    assert len(resumed.train_loss) == len(straight.train_loss) == 3, (resumed, straight)
    assert resumed.train_loss == pytest.approx(straight.train_loss)
    one = torch.load(killed / SUPERNET_FILE, weights_only=True)
    two = torch.load(tmp_path / "straight" / SUPERNET_FILE, weights_only=True)
    assert all(torch.allclose(one[k].float(), two[k].float()) for k in one)
    # a finished supernet is kept, not trained again
    assert train_supernet(recipe, killed) == resumed


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("supernet")
    train_supernet(tiny_recipe(epochs=1), folder, data=data)
    supernet, summary = load_supernet(folder / SUPERNET_FILE)
    return supernet, summary


def test_greedy_slimming_answers_every_target_from_one_descending_pass(trained, data):
    supernet, _ = trained
    cost_model = CostModel.from_spec(SPEC)
    score = Scorer(supernet, calibration_batches(data, 32, 2, 0), held_out(data, 256, 1), cost_model)
    step = steps(supernet.max_widths, "twelfth")
    full = float(cost_model.cost(supernet.max_widths, "macs"))
    targets = [0.6 * full, 0.4 * full, 0.25 * full]
    greedy = slim(supernet, score, cost_model, step, min(targets))
    scored = score.scored
    costs = [p["cost"] for p in greedy.points]
    assert costs == sorted(costs, reverse=True) and costs[-1] <= min(targets) < costs[-2]
    for before, after in zip(greedy.points, greedy.points[1:], strict=False):
        removed = np.asarray(before["widths"]) - np.asarray(after["widths"])
        assert (removed > 0).sum() == 1 and (removed <= step).all()  # one step of one group at a time
    for target in targets:
        point = greedy.at(target)
        assert point is not None and point["cost"] <= target
        again = slim(supernet, score, cost_model, step, target, previous=greedy)
        assert again.points == greedy.points
    assert score.scored == scored  # every target came off the one pass: nothing was scored again
    assert greedy.points[-1]["flops"] == pytest.approx(score.flops)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"width": 0.5}, r"method.width: 0.5 is not allowed; choose a number >= 1"),
        ({"n": -1}, r"method.n: -1 is not allowed; choose an integer >= 0"),
        ({"step": "half"}, r"method.step: 'half' is not allowed; choose one of: twelfth, divisor"),
        ({"calibration_batches": 0}, r"method.calibration_batches: 0 is not allowed"),
    ],
)
def test_bad_autoslim_hyperparameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        check(params)


def test_an_unreachable_target_is_one_line_naming_it(data):
    spec = canonical_spec(SPEC)
    cost_model = CostModel.from_spec(spec)
    task = Task(
        model=spec,
        data=data,
        train=TrainConfig(epochs=1, **TRAIN),
        cost_model=cost_model,
        cost_target=1.0,
        params={"epochs": 1},
    )
    with pytest.raises(
        ValueError, match=r"^cost_target: 1 \(macs\) is out of reach for autoslim: its smallest"
    ) as error:
        find_widths(task, "autoslim")
    assert "\n" not in str(error.value)
