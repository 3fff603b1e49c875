"""Experiment configs: valid ones plan into studies; each malformed one gets one clear line (exit 2, nothing started)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from widthtune.platform.config import ConfigError, apply_overrides, load_config, validate_config
from widthtune.platform.planning import plan_studies
from widthtune.training.datasets import CIFAR_FILES

BASE = {
    "name": "t",
    "model": "resnet_cifar:depth=8",
    "data": {"name": "digits", "resolution": 8},
    "train": {"epochs": 2},
    "method": "uniform",
    "cost_target": {"ratio": 0.5},
}


def with_(**changes):
    raw = {**BASE}
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


MALFORMED = [
    (with_(kind="transfer2"), "kind: 'transfer2' is not allowed"),
    (with_(name="bad name!"), "name: 'bad name!' is not allowed"),
    (with_(model="resnet_cifar:depth=9"), "model: 'resnet_cifar:depth=9'"),
    (with_(model="nosuchfamily"), "model: 'nosuchfamily'"),
    (with_(train={"lr": -1}), "train.lr: -1 is not allowed"),
    (with_(train={"lr": {"uniform": [0.2, 0.1]}}), "train.lr: {uniform: [0.2, 0.1]} needs low < high"),
    (with_(train={"lrr": 0.1}), "train.lrr: unknown field"),
    (
        with_(train={"schedule": {"choice": ["cosine", "sawtooth"]}}),
        "train.schedule: 'sawtooth' is not allowed",
    ),
    (with_(data={"name": "mnist"}), "data.name: 'mnist' is not a dataset"),
    (with_(data={"name": "cifar10"}), "data.root: cifar10 is read from disk"),
    (
        with_(data={"name": "cifar10", "root": "/nonexistent/cifar"}),
        "data.root: '/nonexistent/cifar' is not a folder",
    ),
    (with_(data={"val_fraction": 0}), "data.val_fraction: 0 leaves no validation split"),
    (with_(method="magic"), "method.name: 'magic' is not a method"),
    (with_(method={"name": "random", "lo": 0.1}), "methods[random].lo: unknown hyperparameter"),
    (with_(method={"name": "direct", "space": "layer"}), "method.space: 'layer' is not allowed"),
    (with_(method={"name": "direct", "low": 2, "high": 1}), "method.low/high"),
    (with_(method=None), "method: a sweep needs a method"),
    (with_(method=None, methods=["uniform", "random"]), "a sweep runs one method"),
    (with_(methods=["random"]), "give one of them, not both"),
    (with_(cost_target={"macs": "many"}), "cost_target.macs: 'many' is not a quantity"),
    (with_(cost_target={"ratio": 0.5, "macs": 1}), "needs exactly one of: ratio, macs"),
    (with_(cost_target={"ratio": 0.5, "convention": "joules"}), "cost_target.convention: 'joules'"),
    (with_(search="bayes"), "search.name: 'bayes' is not allowed"),
    (with_(search={"name": "optuna", "sampler": "cmaes"}), "search.sampler: 'cmaes' is not allowed"),
    (with_(search={"name": "optuna", "objectives": ["val_acc", "joy"]}), "search.objectives: 'joy'"),
    (with_(search="grid", train={"lr": {"uniform": [0.1, 0.2]}}), "search: grid enumerates"),
    (with_(scheduler="asha2"), "scheduler.name: 'asha2' is not allowed"),
    (with_(scheduler={"name": "asha", "grace_period": 0}), "scheduler.grace_period: 0 is not allowed"),
    (with_(scheduler={"name": "pbt"}), "scheduler.hyperparam_mutations: pbt needs at least one"),
    (
        with_(scheduler={"name": "pbt", "hyperparam_mutations": {"train.epochs": [1, 2]}}),
        "scheduler.hyperparam_mutations.train.epochs: not mutable",
    ),
    (with_(resources={"cpu": 0}), "resources.cpu: 0 is not allowed"),
    (with_(num_samples=0), "num_samples: 0 is not allowed"),
    (with_(seeds=[]), "seeds: [] is not allowed"),
    (with_(max_failures=-1), "max_failures: -1 is not allowed"),
    (with_(colour="blue"), "colour: unknown field"),
]


@pytest.mark.parametrize(("raw", "message"), MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_config_gets_its_clear_error(raw, message):
    with pytest.raises(ConfigError) as error:
        validate_config(raw)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_overrides_set_nested_fields_as_yaml():
    raw = apply_overrides(BASE, ["train.epochs=5", "train.lr={loguniform: [0.01, 0.1]}", "seeds=[1, 2]"])
    config = validate_config(raw)
    assert config.train == {"epochs": 5, "lr": {"loguniform": [0.01, 0.1]}} and config.seeds == [1, 2]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(BASE, ["train.epochs"])
    with pytest.raises(ConfigError, match="name is not a mapping"):
        apply_overrides(BASE, ["name.x=1"])


def test_optuna_enumerates_seeds_and_grids_as_studies_random_keeps_one():
    raw = with_(
        kind="compare",
        method=None,
        methods=[
            {"name": "direct", "search": "optuna", "num_samples": 3},
            {"name": "random", "label": "rand"},
        ],
        seeds=[0, 1],
        cost_target={"ratio": {"grid": [0.25, 0.5]}},
    )
    studies = plan_studies(validate_config(raw))
    keys = [s.key for s in studies]
    assert keys == [
        "direct-s0-ratio=0.25",
        "direct-s0-ratio=0.5",
        "direct-s1-ratio=0.25",
        "direct-s1-ratio=0.5",
        "rand",
    ]
    rand = studies[-1].param_space()
    assert rand["seed"] == {"grid_search": [0, 1]} and rand["cost_target.ratio"] == {
        "grid_search": [0.25, 0.5]
    }
    assert studies[-1].num_samples == 1 and studies[0].num_samples == 3
    assert studies[0].constants["seed"] == 0 and studies[0].constants["cost_target.ratio"] == 0.25


def test_cli_run_with_a_bad_config_exits_2_with_one_line_and_starts_nothing(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_(train={"lr": "fast"}, storage=str(tmp_path / "runs"))))
    done = subprocess.run(
        [sys.executable, "-m", "widthtune.cli", "run", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("widthtune: error: train") and "Traceback" not in done.stderr
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [("name: [unclosed", "not valid YAML at line 1"), ("- a\n- b\n", "must hold a mapping")],
)
def test_unreadable_config_files(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_configs_validate(path, tmp_path):
    on_disk = yaml.safe_load(path.read_text()).get("data", {}).get("name") in (
        "cifar10",
        "cifar100",
        "imagefolder",
        "imagenet",
    )
    overrides = [f"data.root={tmp_path}"] if on_disk else []  # the user's dataset folder
    for folder, files in CIFAR_FILES.values():  # what check_dataset looks for (it reads nothing)
        (tmp_path / folder).mkdir()
        for name in files:
            (tmp_path / folder / name).touch()
    for split in ("train", "val"):  # an image folder's layout (imagefolder, imagenet)
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            (tmp_path / split / label / "0.png").touch()
    assert plan_studies(load_config(path, overrides))
