"""`retrain.final_train: full` through the platform (real Ray, MLflow, torch): the found widths train on the
training and validation splits, the search's default keeps validation held out, the test set is never trained on."""

import pytest

from widthtune.platform.config import validate_config
from widthtune.platform.runner import run_experiment
from widthtune.results.store import read_epochs, read_trials
from widthtune.training import DataSpec, load_dataset

pytestmark = pytest.mark.usefixtures("local_ray")
DATA = {"name": "digits", "resolution": 8, "fraction": 0.2, "val_fraction": 0.25}


def test_final_train_full_trains_on_training_and_validation(tmp_path):
    config = {
        "name": "final-train",
        "kind": "compare",
        "model": "resnet_cifar:depth=8",
        "data": DATA,
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.05},
        "cost_target": {"ratio": 0.5},
        "methods": [
            {"name": "uniform", "label": "held-out"},
            {"name": "uniform", "label": "full", "retrain": {"final_train": "full"}},
        ],
        "storage": str(tmp_path),
        "resources": {"cpu": 1},
    }
    directory = run_experiment(validate_config(config), say=lambda line: None)
    rows = {r["label"]: r for r in read_trials(directory / "results")}
    assert all(r["status"] == "completed" for r in rows.values()), [r["error"] for r in rows.values()]
    seen = {e["trial_key"]: e["images_seen"] for e in read_epochs(directory / "results")}
    splits = load_dataset(DataSpec(**DATA))
    assert seen[rows["held-out"]["trial_key"]] == len(splits.train_y)
    assert seen[rows["full"]["trial_key"]] == len(splits.train_y) + len(splits.val_y)
    assert rows["full"]["final_test_acc"] is not None  # scored on the untouched test split
