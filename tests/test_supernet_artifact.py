"""The supernet as a shared artifact through the platform (real Ray, MLflow, torch): a compare over three cost
targets trains one supernet, and every trial reads its widths off one greedy pass."""

import json

import pytest

from widthtune.platform.config import validate_config
from widthtune.platform.runner import execute, run_experiment
from widthtune.results.store import read_artifacts, read_trials
from widthtune.trainables.supernet_training import read_summary

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.mark.slow
def test_a_compare_over_three_targets_trains_one_supernet(tmp_path):
    raw = {
        "name": "supernet-once",
        "kind": "compare",
        "model": "resnet_cifar:depth=8,width=0.5,resolution=8",
        "data": {"name": "digits", "resolution": 8, "fraction": 0.1},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "augment": "none"},
        "cost_target": {"ratio": {"grid": [0.3, 0.5, 0.7]}},
        "methods": [{"name": "autoslim", "epochs": 1, "calibration_batches": 2, "eval_batches": 1}],
        "storage": str(tmp_path),
        "max_failures": 0,
    }
    directory = run_experiment(validate_config(raw), say=lambda line: None)
    rows = [r for r in read_trials(directory / "results") if r["role"] != "artifact"]
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    (record,) = read_artifacts(directory / "results")
    assert record["kind"] == "trained-supernet" and record["status"] == "done"
    folder = directory / "artifacts" / record["artifact_key"]
    summary = read_summary(folder)
    assert (summary.starts, summary.resumes, summary.epochs) == (1, 0, 1)  # trained once, not three times
    assert len(list(folder.glob("greedy-*.json"))) == 1  # and slimmed in one pass
    paths = {json.loads(r["params_json"])["artifact.supernet"] for r in rows}
    assert paths == {str(folder / "supernet.pt")}
    # every trial's search FLOPs include the supernet's training, charged once each
    assert all(r["search_flops"] >= summary.flops for r in rows)
    execute(directory, say=lambda line: None)  # resume never retrains it
    assert len(read_artifacts(directory / "results")) == 1 and read_summary(folder).starts == 1
