"""CafeNet: min-min updates only the min-loss assignment, eq. 9 bins by hand, eq. 10 stages, searches under the
target and close to it, and bad hyperparameters named in one line."""

import copy
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from widthtune.models.cost import CostModel
from widthtune.models.registry import canonical_spec, channel_space
from widthtune.models.supernet import Supernet
from widthtune.models.widths import Widths
from widthtune.search_spaces.bin_search import BinGrid, evolutionary_search, random_search
from widthtune.search_spaces.bins import bin_sizes, sensitivities
from widthtune.trainables.adapter import find_widths
from widthtune.trainables.cafenet import check, stage_plan
from widthtune.trainables.supernet_training import locally_free, rule_step
from widthtune.trainables.task import Task
from widthtune.training import DataSpec, TrainConfig, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = "resnet_cifar:depth=8,width=0.5,resolution=8"
TWO_LAYERS = """
from torch import nn

def make(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
"""


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataSpec("digits", resolution=8, fraction=0.1))


def test_min_min_updates_only_the_assignment_with_the_smallest_loss(data):
    space = channel_space(SPEC)
    supernet = Supernet(SPEC, Widths.base(space), seed=0).train()
    reference = copy.deepcopy(supernet)
    x, y = data.train_x[:16], data.train_y[:16]
    optimizer = torch.optim.SGD(supernet.parameters(), lr=1.0, momentum=0.0)
    settings = {"offset": 1, "assignments": 3}
    rule_step(
        supernet, optimizer, x, y, np.random.default_rng(5), "min-min", settings, CostModel.from_spec(SPEC)
    )
    rng = np.random.default_rng(5)
    widths = reference.sample(rng)
    options = [locally_free(widths, reference.max_widths, 1, rng) for _ in range(3)]
    with torch.no_grad():
        losses = [float(F.cross_entropy(reference(x, option), y)) for option in options]
    assert len({tuple(map(tuple, o.values())) for o in options}) > 1  # the options differ
    best = int(np.argmin(losses))
    F.cross_entropy(reference(x, options[best]), y).backward()
    for (name, after), before in zip(supernet.named_parameters(), reference.parameters(), strict=True):
        expected = before.detach() - (before.grad if before.grad is not None else 0)
        assert torch.allclose(after, expected, atol=1e-6), name
    # the BN scales of channels outside the chosen assignment are untouched; of the chosen ones, moved
    modules = dict(reference.model.named_modules())
    params = dict(supernet.model.named_parameters())
    checked = 0
    for name in space.names:
        outside = sorted(set(range(reference.max_widths[name])) - set(options[best][name]))
        for member in space[name].members:
            if outside and isinstance(modules.get(member.path), torch.nn.BatchNorm2d):
                before_bn = modules[member.path].weight.detach()
                assert torch.equal(params[f"{member.path}.weight"][outside], before_bn[outside])
                checked += 1
    assert checked > 0


def test_locally_free_assignments_keep_base_channels_and_free_ones_near_c():
    space = channel_space(SPEC)
    largest = Widths.base(space)
    widths = Widths(space, tuple(max(3, w // 2) for w in largest.values))
    rng = np.random.default_rng(0)
    for _ in range(20):
        chosen = locally_free(widths, largest, 1, rng)
        for name in space.names:
            c = widths[name]
            assert len(chosen[name]) == c and chosen[name][: c - 2] == list(range(c - 2))
            assert all(c - 2 <= i < c + 1 for i in chosen[name][c - 2 :])
    fixed = locally_free(widths, largest, 0, rng)
    assert all(fixed[n] == list(range(widths[n])) for n in space.names)


def test_bins_follow_eq_9_on_a_hand_computed_model(tmp_path):
    source = tmp_path / "two_layers.py"
    source.write_text(textwrap.dedent(TWO_LAYERS))
    cost_model = CostModel.from_spec(f"python:{source}:make,resolution=8")
    widths = Widths.base(cost_model.space)
    assert sorted(widths.values) == [16, 32]
    first = cost_model.space.names[widths.values.index(16)]
    # eq. 7 by hand, 8x8 maps: a channel of the 16-group costs 3*9*64 in conv1 and 32*64 in conv2;
    # one of the 32-group costs 16*64 in conv2 and 10 in the linear layer
    eps = dict(zip(cost_model.space.names, sensitivities(cost_model, widths), strict=True))
    second = next(n for n in cost_model.space.names if n != first)
    assert eps[first] == pytest.approx(27 * 64 + 32 * 64) and eps[second] == pytest.approx(16 * 64 + 10)
    for beta, expected in ((1, {first: 1, second: 4}), (2, {first: 2, second: 7})):  # 3776/1034 = 3.65
        sizes = dict(zip(cost_model.space.names, bin_sizes(cost_model, widths, beta), strict=True))
        assert sizes == expected


def test_multi_stage_budgets_fall_linearly_while_the_minimum_bin_halves():
    assert stage_plan(100.0, 40.0, 1.0, 2.0, 3) == [(80.0, 4.0), (60.0, 2.0), (40.0, 1.0)]
    assert stage_plan(100.0, 40.0, 1.0, 2.0, 1) == [(40.0, 1.0)]


@pytest.mark.parametrize("kind", ["evolutionary", "random"])
def test_searches_never_exceed_the_target_and_land_within_2_percent_under_it(kind):
    cost_model = CostModel.from_spec("vgg_cifar:depth=11,width=0.5")
    upper = np.asarray(Widths.base(cost_model.space).values, dtype=np.int64)
    grid = BinGrid(upper, np.ones_like(upper), np.ones_like(upper))  # a fine space: one channel per bin
    weights = np.random.default_rng(1).random(len(upper))

    def cost(values):
        return np.asarray(cost_model.cost(np.asarray(values, dtype=np.float64), "macs"))

    def score(values):
        return float(weights @ np.sqrt(values))

    budget = 0.37 * float(cost(upper))
    rng = np.random.default_rng(0)
    if kind == "random":
        outcome = random_search(grid, score, cost, budget, 30, rng)
    else:
        outcome = evolutionary_search(
            grid, score, cost, budget, population=8, generations=4, mutation=0.2, crossover=0.5, rng=rng
        )
    assert len(outcome.scored) >= 30 if kind == "random" else len(outcome.scored) > 8
    for widths, _ in outcome.scored:
        assert 0.98 * budget <= float(cost(widths)) <= budget
    assert outcome.score == max(s for _, s in outcome.scored)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"offset": -1}, r"^method.offset: -1 is not allowed; choose an integer >= 0$"),
        ({"beta": 0.5}, r"^method.beta: 0.5 is not allowed; choose a number >= 1"),
        ({"alpha": 0}, r"^method.alpha: 0 is not allowed; choose a number > 0$"),
        ({"alpha": -2.0}, r"^method.alpha: -2.0 is not allowed"),
        (
            {"strategy": "grid"},
            r"^method.strategy: 'grid' is not allowed; choose one of: evolutionary, random$",
        ),
        ({"mutation": 2}, r"^method.mutation: 2 is not allowed; choose a number in \[0, 1\]$"),
    ],
)
def test_bad_cafenet_hyperparameters_are_named_in_one_line(params, message):
    with pytest.raises(ValueError, match=message):
        check(params)


def test_the_config_loader_reports_a_bad_offset_before_anything_runs(tmp_path):
    from widthtune.platform.config import validate_config

    raw = {
        "name": "bad-offset",
        "kind": "compare",
        "model": SPEC,
        "data": {"name": "digits", "resolution": 8},
        "cost_target": {"ratio": 0.5},
        "methods": [{"name": "cafenet", "offset": -1}],
        "storage": str(tmp_path),
    }
    with pytest.raises(ValueError, match=r"methods\[cafenet\]: method.offset: -1 is not allowed"):
        validate_config(raw)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_small_cafenet_search_meets_its_target_and_refuses_an_unreachable_one(data):
    spec = canonical_spec(SPEC)
    cost_model = CostModel.from_spec(spec)
    train = TrainConfig(epochs=1, batch_size=32, lr=0.05, augment="none", device="cpu")
    small = {"epochs": 1, "population": 4, "generations": 1, "calibration_batches": 1, "eval_batches": 1}
    target = 0.5 * cost_model.base().macs
    task = Task(model=spec, data=data, train=train, cost_model=cost_model, cost_target=target, params=small)
    found = find_widths(task, "cafenet")
    assert 0.9 * target <= cost_model.cost(found.widths, "macs") <= target
    assert found.search_flops > found.info["supernet_flops"] > 0
    assert found.info["scored"] >= 4 * 3  # max-max: every candidate scored on 3 assignments
    with pytest.raises(
        ValueError, match=r"^cost_target: 1 \(macs\) is out of reach for cafenet: its smallest"
    ) as error:
        find_widths(
            Task(model=spec, data=data, train=train, cost_model=cost_model, cost_target=1.0, params=small),
            "cafenet",
        )
    assert "\n" not in str(error.value)
