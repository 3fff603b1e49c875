"""Reused Ray workers (one process runs trial after trial, keeping its dataset and cost models) give exactly
the results fresh workers give."""

import pytest

from widthtune.platform.config import validate_config
from widthtune.platform.runner import run_experiment
from widthtune.results.store import read_trials
from widthtune.trainables.adapter import worker_cost_model, worker_dataset
from widthtune.trainables.trial import TrialSpec

pytestmark = pytest.mark.usefixtures("local_ray")


def sweep(tmp_path, reuse):
    raw = {
        "name": f"reuse-{reuse}".lower(),
        "model": "resnet_cifar:depth=8",
        "data": {"name": "digits", "resolution": 8, "fraction": 0.3},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.05},
        "method": {"name": "random", "shape_seed": {"grid": [1, 2]}},
        "cost_target": {"ratio": 0.5},
        "seeds": [0, 1],
        "resources": {"cpu": 1},
        "search": {"name": "random", "max_concurrent": 1},
        "reuse_actors": reuse,
        "storage": str(tmp_path),
        "max_failures": 0,
    }
    directory = run_experiment(validate_config(raw), say=lambda line: None)
    rows = read_trials(directory)
    return {
        (r["seed"], r["widths"] and tuple(r["widths"])): (r["final_val_acc"], r["final_test_acc"])
        for r in rows
    }


def test_the_same_seeds_give_the_same_metrics_with_reuse_on_and_off(tmp_path):
    fresh, reused = sweep(tmp_path, False), sweep(tmp_path, True)
    assert len(fresh) == 4 and fresh == reused


def test_a_worker_loads_a_dataset_and_traces_a_cost_model_once():
    spec = TrialSpec.parse(
        {
            "model": "resnet_cifar:depth=8,resolution=8",
            "method": "uniform",
            "data.name": "digits",
            "data.resolution": 8,
        }
    )
    assert worker_dataset(spec.data) is worker_dataset(spec.data)
    assert worker_cost_model(spec.model) is worker_cost_model(spec.model)
