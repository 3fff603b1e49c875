"""LW-DNA through the platform (real Ray, MLflow, torch): widths at the cost target, retrained from scratch,
distilled from a widened teacher trained earlier in the same experiment."""

import json

import pytest

from widthtune.models.cost import CostModel
from widthtune.platform.config import ConfigError, validate_config
from widthtune.platform.runner import run_experiment
from widthtune.results.store import read_epochs, read_trials

SPEC = "resnet_cifar:depth=8"
LWDNA = {"name": "lwdna", "beta": 2.0, "m": 4}


pytestmark = pytest.mark.usefixtures("local_ray")


def lwdna_config(tmp_path, **fields):
    return {
        "name": "lwdna",
        "kind": "compare",
        "model": SPEC,
        "data": {"name": "digits", "resolution": 8, "fraction": 0.3},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "augment": "none"},
        "cost_target": {"ratio": 0.5},
        "methods": [
            {"name": "uniform", "label": "teacher", "multiplier": 2.0},
            {**LWDNA, "label": "lwdna"},
            {**LWDNA, "label": "lwdna-kd", "distill": {"teacher": "teacher"}},
        ],
        "storage": str(tmp_path),
        "max_failures": 0,
        **fields,
    }


def test_distillation_teacher_must_be_an_earlier_method_or_a_checkpoint(tmp_path):
    raw = lwdna_config(tmp_path)
    raw["methods"] = [raw["methods"][2], raw["methods"][0]]
    with pytest.raises(
        ConfigError, match=r"methods\[lwdna-kd\].distill.teacher: 'teacher' must be listed before"
    ):
        validate_config(raw)
    raw["methods"] = [{**LWDNA, "distill": {"teacher": str(tmp_path / "nowhere")}}]
    with pytest.raises(ConfigError, match="is neither an earlier method's label"):
        validate_config(raw)


def test_lwdna_meets_the_target_and_distils_from_a_widened_teacher(tmp_path):
    directory = run_experiment(validate_config(lwdna_config(tmp_path)), say=lambda line: None)
    rows = {r["label"]: r for r in read_trials(directory / "results")}
    assert all(r["status"] == "completed" for r in rows.values()), [r["error"] for r in rows.values()]
    base = CostModel.from_spec(f"{SPEC},resolution=8").base().macs  # priced at the data's 8 px
    assert rows["teacher"]["macs"] > 3.5 * base  # the widened net (x2 widths)
    for label in ("lwdna", "lwdna-kd"):
        assert abs(rows[label]["macs"] - 0.5 * base) <= 0.001 * 0.5 * base  # within 0.1%
        assert rows[label]["search_flops"] > 0
    assert rows["lwdna"]["widths"] == rows["lwdna-kd"]["widths"]  # same seed, same shrinkage
    params = json.loads(rows["lwdna-kd"]["params_json"])
    assert params["distill.teacher_trial"] == rows["teacher"]["trial_key"]
    assert params["distill.alpha"] == 0.4 and params["distill.temperature"] == 4.0
    losses = {
        label: [
            e["train_loss"]
            for e in read_epochs(directory / "results")
            if e["trial_key"] == rows[label]["trial_key"]
        ]
        for label in ("lwdna", "lwdna-kd")
    }
    assert losses["lwdna"] != losses["lwdna-kd"]  # the distilled trial minimised another objective
