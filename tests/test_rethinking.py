"""Rethinking's protocol as one compare config (real Ray, MLflow, torch): slimming under three retraining modes
against a guided control at the same cost, and the report's chapter tables."""

import json

import pytest

from widthtune.models.cost import CostModel
from widthtune.platform.config import ConfigError, validate_config
from widthtune.platform.runner import run_experiment
from widthtune.results.store import read_epochs, read_trials

SPEC = "vgg_cifar:depth=11,width=0.25"
SLIMMING = {"lam": 0.01, "ratio": 0.5, "sparsity_epochs": 1}


pytestmark = pytest.mark.usefixtures("local_ray")


def rethinking_config(tmp_path, **fields):
    return {
        "name": "rethinking",
        "kind": "compare",
        "model": SPEC,
        "data": {"name": "digits", "resolution": 16, "fraction": 0.3},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "schedule": "multistep", "milestones": [1]},
        "methods": [
            {
                "name": "slimming",
                **SLIMMING,
                "retrain": {"mode": {"grid": ["finetune", "scratch-e", "scratch-b"]}, "finetune_epochs": 2},
            },
            {
                "name": "control",
                "label": "guided",
                "kind": "guided",
                "match": "macs",
                "source_params": SLIMMING,
            },
        ],
        "storage": str(tmp_path),
        "max_failures": 0,
        **fields,
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"retrain": {"mode": "finetune"}},
            r"retrain.mode: finetune needs kept weights, and methods\[guided\]",
        ),
        ({"retrain": {"mode": "scratch-c"}}, "retrain.mode: 'scratch-c' is not allowed"),
        ({"retrain": {"epochs": 3}}, "retrain.epochs: unknown field"),
        (
            {"retrain": {"mode": "scratch-b"}, "scheduler": "asha"},
            "scratch-b trains longer than train.epochs",
        ),
    ],
)
def test_retraining_config_errors_name_the_field(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(rethinking_config(tmp_path, **changes))


def test_slimming_retrained_three_ways_against_a_guided_control(tmp_path):
    directory = run_experiment(validate_config(rethinking_config(tmp_path)), say=lambda line: None)
    rows = read_trials(directory / "results")
    assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    slimming = {r["retrain"]: r for r in rows if r["label"] == "slimming"}
    (guided,) = [r for r in rows if r["label"] == "guided"]
    assert set(slimming) == {"finetune", "scratch-e", "scratch-b"}
    # the same pruned architecture under every mode; the guided control at its cost (within 0.5%)
    assert (
        slimming["finetune"]["widths"] == slimming["scratch-e"]["widths"] == slimming["scratch-b"]["widths"]
    )
    assert abs(guided["macs"] - slimming["scratch-e"]["macs"]) <= 0.005 * slimming["scratch-e"]["macs"]
    assert guided["widths"] != slimming["scratch-e"]["widths"]
    base = CostModel.from_spec(f"{SPEC},resolution=16").base().flops  # at the data's 16 px
    factor = base / slimming["scratch-b"]["flops"]
    assert (
        slimming["scratch-b"]["epochs_planned"] == int(2 * factor + 0.5) > 2
    )  # Scratch-B: epochs x full / pruned
    assert slimming["scratch-e"]["epochs_planned"] == slimming["finetune"]["epochs_planned"] == 2
    epochs = read_epochs(directory / "results")
    lrs = [e["lr"] for e in epochs if e["trial_key"] == slimming["finetune"]["trial_key"]]
    assert lrs == [pytest.approx(0.005)] * 2  # fine-tuned at the recipe's smallest rate, held
    params = json.loads(slimming["finetune"]["params_json"])
    assert params["retrain.mode"] == "finetune" and params["method.ratio"] == 0.5
    report = (directory / "report" / "report.md").read_text()
    assert "| method | cost target | params | Fine-tuned | Scratch-E | Scratch-B |" in report
    assert "Width pattern" in report and "| conv1 |" in report
