"""Hyperparameter domains and width spaces, as Tune spaces and as Optuna define-by-run spaces."""

import optuna
import pytest
from ray import tune

from widthtune.models.cost import CostModel
from widthtune.search_spaces.cost_target import parse_quantity, resolve_cost_target
from widthtune.search_spaces.domains import DomainError, parse_domain, split_spaces, unflatten
from widthtune.search_spaces.width_space import WidthSpace, constrain

SPEC = "resnet_cifar:depth=8"


@pytest.fixture(scope="module")
def cost_model():
    return CostModel.from_spec(SPEC)


def test_each_domain_kind_becomes_its_tune_space():
    assert isinstance(parse_domain("a", {"uniform": [0.1, 1]}).to_tune(), tune.search.sample.Float)
    assert isinstance(parse_domain("a", {"loguniform": [1e-3, 1]}).to_tune(), tune.search.sample.Float)
    assert isinstance(parse_domain("a", {"randint": [1, 5]}).to_tune(), tune.search.sample.Integer)
    assert isinstance(parse_domain("a", {"choice": [1, "x"]}).to_tune(), tune.search.sample.Categorical)
    assert parse_domain("a", {"grid": [1, 2]}).to_tune() == {"grid_search": [1, 2]}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"uniform": [1, 0]}, "low < high"),
        ({"loguniform": [0, 1]}, "low > 0"),
        ({"randint": [0.5, 3]}, "two integers"),
        ({"uniform": [1]}, "two numbers"),
        ({"choice": []}, "non-empty"),
    ],
)
def test_malformed_domains_name_the_field(value, words):
    with pytest.raises(DomainError, match=words) as error:
        parse_domain("train.lr", value)
    assert "train.lr" in str(error.value)


def test_optuna_define_by_run_samples_inside_each_domain():
    domains = {
        "lr": parse_domain("lr", {"loguniform": [1e-3, 1e-1]}),
        "n": parse_domain("n", {"randint": [2, 4]}),
        "c": parse_domain("c", {"choice": ["a", "b"]}),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        values = {k: d.suggest(trial, k) for k, d in domains.items()}
        assert 1e-3 <= values["lr"] <= 1e-1 and values["n"] in (2, 3) and values["c"] in ("a", "b")
        study.tell(trial, 0.0)


def test_nested_values_flatten_and_unflatten():
    constants, domains = split_spaces({"lr": {"uniform": [0.1, 0.2]}, "epochs": 3, "x": {"y": 1}}, "train")
    assert constants == {"train.epochs": 3, "train.x.y": 1} and list(domains) == ["train.lr"]
    assert unflatten({**constants, "train.lr": 0.15, "other": 1}, "train") == {
        "epochs": 3,
        "x": {"y": 1},
        "lr": 0.15,
    }


def test_stage_space_has_one_dimension_per_stage(cost_model):
    stage = WidthSpace(cost_model.space, "stage")
    group = WidthSpace(cost_model.space, "group")
    assert set(stage.dimensions()) == {"stage1", "stage2", "stage3"}
    assert len(group.dimensions()) == len(cost_model.space)
    shape = stage.shape({"widths.stage1": 1.0, "widths.stage2": 0.5, "widths.stage3": 2.0})
    for g in cost_model.space:
        assert shape[g.name] == g.base * {1: 1.0, 2: 0.5, 3: 2.0}[g.stage]


def test_matched_direction_meets_the_cost_target(cost_model):
    space = WidthSpace(cost_model.space, "group", 0.25, 2.0, matched=True)
    target = 0.4 * cost_model.base().macs
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        params = space.suggest(study.ask())
        widths = space.widths(params, cost_model, target)
        assert abs(cost_model.cost(widths) - target) <= 0.005 * target


def test_unmatched_space_trains_the_rounded_sample(cost_model):
    space = WidthSpace(cost_model.space, "group", 0.5, 1.0, matched=False)
    params = dict.fromkeys(space.param_names(), 0.5)
    widths = space.widths(params, cost_model, target=123.0)
    assert all(widths[g.name] == g.base // 2 for g in cost_model.space)


def _maximise_cost(cost_model, constrained):
    space = WidthSpace(cost_model.space, "stage", 0.25, 2.0, matched=False)
    target = 0.5 * cost_model.base().macs
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=8)
    )
    for _ in range(30):
        trial = study.ask()
        cost = cost_model.cost(space.widths(space.suggest(trial)))
        if constrained:
            constrain(trial, cost, target)
        study.tell(trial, cost)  # reward cost itself: only the constraint holds it back
    return study, space, target


def test_the_cost_constraint_keeps_optunas_best_within_the_target(cost_model):
    study, space, target = _maximise_cost(cost_model, constrained=True)
    first = study.trials[0]
    assert first.constraints["cost"] == pytest.approx(
        cost_model.cost(space.widths(first.params)) / target - 1
    )
    assert cost_model.cost(space.widths(study.best_trial.params)) <= target
    free, _, _ = _maximise_cost(cost_model, constrained=False)
    assert cost_model.cost(space.widths(free.best_trial.params)) > target  # without it the best overshoots


def test_cost_targets_absolute_and_ratio(cost_model):
    assert parse_quantity("x", "20M") == 20e6 and parse_quantity("x", "1.5G") == 1.5e9
    assert resolve_cost_target({"macs": "2M"}, cost_model).value == 2e6
    ratio = resolve_cost_target({"ratio": 0.5, "convention": "params"}, cost_model)
    assert ratio.value == 0.5 * cost_model.base().params and ratio.convention == "params"
    with pytest.raises(ValueError, match="cost_target"):
        resolve_cost_target({"macs": "lots"}, cost_model)
    with pytest.raises(ValueError, match="exactly one"):
        resolve_cost_target({"macs": 1, "ratio": 0.5}, cost_model)
