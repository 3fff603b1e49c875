"""The platform end to end with real Ray, MLflow (sqlite), Optuna and torch — tiny models, few epochs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from widthtune.cli import main
from widthtune.models.cost import CostModel
from widthtune.platform.config import validate_config
from widthtune.platform.leftovers import SESSION_FILE, session_processes
from widthtune.platform.runner import read_state, run_experiment
from widthtune.results.store import read_epochs, read_trials
from widthtune.trainables.adapter import reported_widths

SPEC = "resnet_cifar:depth=8"
DATA = {"name": "digits", "resolution": 8, "fraction": 0.3}


pytestmark = pytest.mark.usefixtures("local_ray")


def experiment_config(tmp_path, **fields):
    return {
        "name": "exp",
        "model": SPEC,
        "data": DATA,
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05},
        "method": "uniform",
        "cost_target": {"ratio": 0.5},
        "storage": str(tmp_path),
        "max_failures": 0,
        **fields,
    }


def experiment(tmp_path, **fields):
    return run_experiment(validate_config(experiment_config(tmp_path, **fields)), say=lambda line: None)


def child_runs(directory):
    state = read_state(directory)
    client = MlflowClient(state["tracking"]["uri"])
    runs = client.search_runs([state["tracking"]["experiment_id"]], max_results=1000)
    parent = state["tracking"]["parent_run_id"]
    return client, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]


def test_errored_and_nan_trials_are_recorded_with_their_reason_and_the_sweep_goes_on(tmp_path):
    directory = experiment(
        tmp_path,
        search="grid",
        train={
            "epochs": 2,
            "lr": {"grid": [0.05, 1e12]},
            "batch_size": {"grid": [64, 100000]},
            "drop_last": True,
        },
    )
    rows = read_trials(directory / "results")
    assert len(rows) == 4
    by_config = {}
    for r in rows:
        params = json.loads(r["params_json"])
        by_config[(int(params["train.lr"] == 0.05), params["train.batch_size"] == 100000)] = r
    ok = by_config[(1, False)]
    assert ok["status"] == "completed" and ok["epochs_trained"] == 2 and ok["error"] is None
    nan = by_config[(0, False)]
    assert nan["status"] == "errored" and "NonFiniteLossError" in nan["error"] and "epoch 1" in nan["error"]
    for key in ((1, True), (0, True)):
        assert by_config[key]["status"] == "errored" and "train.batch_size: 100000" in by_config[key]["error"]
    # the completed trial's record: cost target met, widths stored, history per epoch
    target = 0.5 * CostModel.from_spec(f"{SPEC},resolution=8").base().macs  # at the data's 8 px
    assert abs(ok["macs"] - target) <= 0.005 * target
    assert ok["group_names"] and len(ok["widths"]) == len(ok["group_names"])
    assert ok["train_flops"] > 0 and ok["search_flops"] == 0 and ok["wall_seconds"] > 0
    epochs = [e for e in read_epochs(directory / "results") if e["trial_key"] == ok["trial_key"]]
    assert [e["epoch"] for e in epochs] == [1, 2]

    client, runs = child_runs(directory)
    assert len(runs) == 4
    statuses = sorted(r.info.status for r in runs)
    assert statuses == ["FAILED", "FAILED", "FAILED", "FINISHED"]
    finished = next(r for r in runs if r.info.status == "FINISHED")
    tags = finished.data.tags
    for tag in ("method", "role", "model", "dataset", "cost_target", "seed"):
        assert tags[f"widthtune.{tag}"]
    assert tags["widthtune.method"] == "uniform" and tags["widthtune.dataset"] == "digits"
    assert finished.data.params["train.lr"] == "0.05"
    history = client.get_metric_history(finished.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(finished.info.run_id)}
    assert {"widths.json", "width_profile.svg"} <= artifacts
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert all(r.data.tags["widthtune.error"] for r in failed)
    trained = {f"widths.{n}": str(w) for n, w in zip(ok["group_names"], ok["widths"], strict=True)}
    assert {k: finished.data.params.get(k) for k in trained} == trained

    # Tune's own record of each trial: result.json (widths as one JSON text), no TensorBoard or CSV loggers
    results = sorted((directory / "tune").glob("*/*/result.json"))
    assert len(results) == 4
    assert not list((directory / "tune").glob("*/*/events.out.tfevents*"))
    assert not list((directory / "tune").glob("*/*/progress.csv"))
    reported = [json.loads(line) for path in results for line in path.read_text().splitlines()]
    with_widths = [r for r in reported if "widths" in r]
    assert with_widths and all(isinstance(r["widths"], str) for r in with_widths)
    assert not any(key.startswith("widths/") for r in reported for key in r)
    assert reported_widths(with_widths[-1]).keys() == set(ok["group_names"])

    # report and ls read the same store
    md, page = (directory / "report" / "report.md"), (directory / "report" / "report.html")
    assert md.is_file() and page.is_file() and "NonFiniteLossError" in md.read_text()


def test_optuna_asha_direct_sweep_meets_the_budget_every_trial(tmp_path):
    directory = experiment(
        tmp_path,
        method={"name": "direct", "space": "stage", "low": 0.5, "high": 1.5},
        search={"name": "optuna", "sampler": "tpe", "max_concurrent": 2},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        num_samples=4,
        train={"epochs": 3, "batch_size": 64},
    )
    rows = read_trials(directory / "results")
    assert len(rows) == 4 and {r["status"] for r in rows} <= {"completed", "stopped"}
    target = 0.5 * CostModel.from_spec(f"{SPEC},resolution=8").base().macs  # at the data's 8 px
    assert all(abs(r["macs"] - target) <= 0.005 * target for r in rows)
    assert len({tuple(r["widths"]) for r in rows}) > 1  # Optuna proposed different shapes


def test_multi_objective_nsga2_over_unmatched_widths(tmp_path):
    directory = experiment(
        tmp_path,
        method={"name": "direct", "space": "stage", "low": 0.25, "high": 1.0, "matched": False},
        search={"name": "optuna", "sampler": "nsga2", "objectives": ["val_acc", "macs"]},
        num_samples=3,
        train={"epochs": 1, "batch_size": 64},
    )
    rows = read_trials(directory / "results")
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    assert len({r["macs"] for r in rows}) == 3  # the widths were trained as sampled, not matched


@pytest.mark.parametrize(
    "scheduler",
    [
        {"name": "hyperband", "reduction_factor": 2},
        {"name": "median", "grace_period": 1, "min_samples_required": 1},
        {
            "name": "pbt",
            "perturbation_interval": 1,
            "hyperparam_mutations": {"train.lr": {"loguniform": [0.01, 0.2]}},
        },
    ],
    ids=lambda s: s["name"],
)
def test_each_scheduler_runs_a_sweep(tmp_path, scheduler):
    directory = experiment(
        tmp_path,
        method="random",
        seeds=[0, 1, 2],
        scheduler=scheduler,
        train={"epochs": 3, "batch_size": 64, "lr": {"loguniform": [0.01, 0.2]}},
        num_samples=1,
    )
    rows = read_trials(directory / "results")
    assert len(rows) == 3 and {r["status"] for r in rows} <= {"completed", "stopped"}, [
        r["error"] for r in rows
    ]


def test_cli_ls_and_report_read_the_store(tmp_path, capsys):
    directory = experiment(tmp_path, seeds=[0, 1])
    with pytest.raises(SystemExit) as done:
        main(["report", str(directory)])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "uniform" in out and "macs x0.5" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    with pytest.raises(SystemExit):
        main(["ls", str(tmp_path)])
    out = capsys.readouterr().out
    assert "exp" in out and "compare" not in out and "1/1" in out


def test_a_second_run_with_the_same_name_is_refused_and_loses_nothing(tmp_path):
    experiment(tmp_path)
    before = read_trials(tmp_path / "exp" / "results")
    with pytest.raises(Exception, match="already exists"):
        experiment(tmp_path)
    assert read_trials(tmp_path / "exp" / "results") == before


@pytest.mark.slow
def test_driver_killed_mid_sweep_then_resumed_completes_every_trial_once(tmp_path):
    config = experiment_config(
        tmp_path,
        name="killed",
        train={"epochs": 4, "batch_size": 32, "lr": 0.05},
        seeds=[0, 1, 2],
        max_failures=1,
    )
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "widthtune.cli"]
    driver = subprocess.Popen(
        [*command, "run", str(path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    results = tmp_path / "killed" / "results"
    deadline = time.time() + 240
    while (
        time.time() < deadline and driver.poll() is None
    ):  # kill once a trial is stored and others are mid-way
        journals = list((results / "journal").glob("*.jsonl")) if (results / "journal").is_dir() else []
        if len(read_trials(results)) >= 1 and len(journals) >= 3:
            break
        time.sleep(0.5)
    assert driver.poll() is None, (
        f"the sweep ended before it could be killed: {driver.stderr.read().decode()[-2000:]}"
    )
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    stored_before = len(read_trials(results))
    assert 1 <= stored_before < 3
    session = json.loads((tmp_path / "killed" / SESSION_FILE).read_text())["session_dir"]

    resumed = subprocess.run(
        [*command, "resume", str(tmp_path / "killed")], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert session_processes(session) == []  # what the killed driver's Ray left running was stopped
    rows = read_trials(results)
    assert len(rows) == 3 and len({r["trial_id"] for r in rows}) == 3
    assert all(r["status"] == "completed" and r["epochs_trained"] == 4 for r in rows), [
        (r["status"], r["epochs_trained"], r["error"]) for r in rows
    ]
    epochs = read_epochs(results)
    for row in rows:
        assert sorted(e["epoch"] for e in epochs if e["trial_key"] == row["trial_key"]) == list(range(1, 5))
    client, runs = child_runs(tmp_path / "killed")
    keys = [r.data.tags["widthtune.trial_key"] for r in runs]
    assert sorted(keys) == sorted(r["trial_key"] for r in rows)
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, 5))
    assert read_state(tmp_path / "killed")["studies"] == {"uniform": "done"}


@pytest.mark.slow
def test_quickstart_prints_the_table_the_report_and_the_mlflow_command(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "widthtune.cli",
            "quickstart",
            "--storage",
            str(tmp_path),
            "--set",
            "train.epochs=3",
            "--set",
            "seeds=[0]",
        ],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for word in ("uniform", "random", "direct", "report:", "mlflow ui --backend-store-uri sqlite:///"):
        assert word in done.stdout
    (directory,) = [p for p in Path(tmp_path).iterdir() if p.is_dir()]
    rows = read_trials(directory / "results")
    assert {r["method"] for r in rows} == {"uniform", "random", "direct"}
    assert {r["seed"] for r in rows} == {0}  # the shipped two seeds, cut to one here
