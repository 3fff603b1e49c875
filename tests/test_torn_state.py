"""A torn Tune state (its experiment_state file cut short, as by a full disk) does not corrupt the store: the
study falls back to what the Parquet store holds, runs only what is missing, and every trial is stored once."""

import pytest

from widthtune.platform.config import validate_config
from widthtune.platform.runner import execute, read_state, run_experiment, torn_tune_state
from widthtune.results.store import read_trials

pytestmark = pytest.mark.usefixtures("local_ray")


def test_a_torn_tune_state_reruns_only_what_the_store_lacks(tmp_path):
    raw = {
        "name": "torn",
        "model": "resnet_cifar:depth=8",
        "data": {"name": "digits", "resolution": 8, "fraction": 0.2},
        "train": {"epochs": 1, "batch_size": 64},
        "method": "uniform",
        "cost_target": {"ratio": {"grid": [0.25, 0.5, 0.75]}},
        "storage": str(tmp_path),
        "max_failures": 0,
    }
    directory = run_experiment(validate_config(raw), say=lambda line: None)
    rows = read_trials(directory)
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    # as if the driver died while the disk was full: one trial's row is lost, Tune's state file is torn
    lost = sorted(rows, key=lambda r: r["cost_target"])[0]
    (directory / "results" / "trials" / f"{lost['trial_key']}.parquet").unlink()
    state = read_state(directory)
    state_file = sorted((directory / "tune" / "uniform").glob("experiment_state-*.json"))[-1]
    state_file.write_text(state_file.read_text()[:200])
    assert torn_tune_state(str(directory / "tune" / "uniform")) is not None
    state["studies"]["uniform"] = "running"
    (directory / "experiment.json").write_text(__import__("json").dumps(state))

    lines: list[str] = []
    execute(directory, say=lines.append)
    assert any("damaged" in line and "1 trials" in line for line in lines), lines
    after = read_trials(directory)
    assert len(after) == 3 and all(r["status"] == "completed" for r in after)
    assert sorted(r["cost_target"] for r in after) == sorted(r["cost_target"] for r in rows)
    kept = {r["trial_key"] for r in rows} - {lost["trial_key"]}
    assert kept <= {r["trial_key"] for r in after}  # the stored completed trials were not run again
    assert read_state(directory)["studies"]["uniform"] == "done"
