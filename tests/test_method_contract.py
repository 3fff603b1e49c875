"""The contract every registered method keeps: defaults pass its check, a search on a tiny task returns widths
of the model's space at the cost target, its info is JSON, and its mistakes name the field."""

import json

import pytest

from widthtune.models.match import COST_TOLERANCE
from widthtune.models.widths import Widths
from widthtune.platform.config import ConfigError, validate_config
from widthtune.trainables.adapter import find_widths
from widthtune.trainables.registry import registered

SPEC = "resnet_cifar:depth=8"
METHODS = sorted(registered())
# the search budget of a tiny contract run, for methods whose paper defaults search for hours
SMALL_SEARCH = {
    "autoslim": {"epochs": 1, "calibration_batches": 1, "eval_batches": 1},
    "cafenet": {"epochs": 1, "population": 4, "generations": 1, "calibration_batches": 1, "eval_batches": 1},
}


@pytest.fixture(scope="module")
def task(tiny_task):
    return tiny_task


def settings(name, task):
    """The defaults, plus what a method cannot default (the widths `given` is handed)."""
    method = registered()[name]
    params = dict(method.defaults)
    if name == "given":
        params.update(widths=Widths.base(task.space).as_dict(), match=True)
    return {**params, **SMALL_SEARCH.get(name, {})}


@pytest.mark.parametrize("name", METHODS)
def test_defaults_pass_the_methods_own_check(name, task):
    registered()[name].check(settings(name, task))


@pytest.mark.parametrize("name", METHODS)
def test_search_returns_widths_of_the_space_at_the_target(name, task, one_thread):
    from dataclasses import replace

    method = registered()[name]
    params = settings(name, task)
    trial_params = {}
    if method.width_space is not None:
        space = method.width_space(task.space, params)
        trial_params = {key: 1.0 for key in space.param_names()}
    found = find_widths(replace(task, params=params, trial_params=trial_params), name)
    assert found.widths.space == task.space
    for group, width in zip(task.space, found.widths.values, strict=True):
        assert group.min <= width and width % group.divisor == 0
    cost = task.cost_model.cost(found.widths)
    assert cost <= task.cost_target * (1 + COST_TOLERANCE), (name, cost / task.cost_target)
    json.dumps(found.info)
    assert found.search_flops >= 0


@pytest.mark.parametrize("name", METHODS)
def test_an_unknown_hyperparameter_is_named(name, tmp_path):
    raw = {
        "name": "c",
        "model": SPEC,
        "method": {"name": name, "no_such_setting": 1},
        "storage": str(tmp_path),
    }
    with pytest.raises(ConfigError, match=rf"methods\[{name}\]\.no_such_setting: unknown hyperparameter"):
        validate_config(raw)


@pytest.mark.parametrize("name", METHODS)
def test_a_method_declares_itself(name):
    method = registered()[name]
    assert method.name == name and method.summary and not method.summary.endswith(".")
    assert set(method.fixed_keys) <= set(method.defaults)
    assert isinstance(method.optimises_widths, bool) and isinstance(method.keeps_weights, bool)


def test_widthtune_methods_lists_every_method_with_its_summary_and_defaults(capsys, monkeypatch):
    from widthtune.cli import main

    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit) as exited:
        main(["methods"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    for method in registered().values():
        assert method.name in out and method.summary[:30] in out
    assert "beta=2.0" in out and "multiplier=None" in out
