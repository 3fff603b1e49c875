"""A trial's MLflow child run in few round-trips holds everything (params, epochs, trained widths, artifacts), and
a parent run opened while Tune starts reaches the recorder and the saved state."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from widthtune.platform.tracking import (
    Tracking,
    TrialRuns,
    close_parent_run,
    log_files,
    open_parent_run,
    sqlite_uri,
)
from widthtune.results.files import EXPERIMENT_FILE


def _tracking(tmp_path: Path):
    return open_parent_run(
        sqlite_uri(tmp_path), "runs", tmp_path / "mlartifacts", "parent", {"widthtune.kind": "sweep"}
    )


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    return sorted(f.path for f in client.list_artifacts(run_id, path))


def test_a_new_runs_params_travel_with_its_first_epoch_and_it_closes_with_widths_and_files(tmp_path):
    tracking = _tracking(tmp_path)
    folder = tmp_path / "trials" / "s__1"
    folder.mkdir(parents=True)
    files = [folder / "widths.json", folder / "width_profile.svg"]
    for path in files:
        path.write_text("x")
    runs = TrialRuns(tracking)
    run_id = runs.run_for("s__1", "s/1", {"widthtune.method": "random"}, {"train.lr": 0.1, "skip": None})
    runs.log_epoch("s__1", 1, {"val_acc": 0.5, "epoch": 1.0}, 1000)
    client = MlflowClient(tracking.uri)
    live = client.get_run(run_id)
    assert live.data.params == {"train.lr": "0.1"} and live.data.metrics["val_acc"] == 0.5
    assert live.data.tags["mlflow.parentRunId"] == tracking.parent_run_id
    runs.finish("s__1", "stopped", {"widthtune.status": "stopped"}, files, params={"widths.g0": 8})
    done = client.get_run(run_id)
    assert done.info.status == "FINISHED" and done.data.tags["widthtune.status"] == "stopped"
    assert done.data.params == {"train.lr": "0.1", "widths.g0": "8"}
    assert _artifacts(client, run_id) == ["width_profile.svg", "widths.json"]


def test_a_run_that_ends_before_any_epoch_still_gets_its_params(tmp_path):
    tracking = _tracking(tmp_path)
    runs = TrialRuns(tracking)
    run_id = runs.run_for("s__2", "s/2", {}, {"train.lr": 0.2})
    runs.finish("s__2", "errored", {"widthtune.status": "errored"}, [])
    run = MlflowClient(tracking.uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.params == {"train.lr": "0.2"}


def test_a_run_found_again_after_a_resume_gets_only_the_params_it_lacks(tmp_path):
    tracking = _tracking(tmp_path)
    first = TrialRuns(tracking)
    run_id = first.run_for("s__3", "s/3", {}, {"train.lr": 0.3})
    first.log_epoch("s__3", 1, {"epoch": 1.0}, 1000)
    again = TrialRuns(tracking)  # a resumed driver: the run is found by its key tag
    assert again.run_for("s__3", "s/3", {}, {"train.lr": 0.3, "method.seed": 4}) == run_id
    again.log_epoch("s__3", 1, {"epoch": 1.0}, 2000)  # already logged: skipped
    again.finish("s__3", "completed", {"widthtune.status": "completed"}, [], params={"widths.g0": 4})
    run = MlflowClient(tracking.uri).get_run(run_id)
    assert run.data.params == {"train.lr": "0.3", "method.seed": "4", "widths.g0": "4"}
    assert len(MlflowClient(tracking.uri).get_metric_history(run_id, "epoch")) == 1


def test_files_beside_others_are_attached_one_by_one_and_nothing_else_goes(tmp_path):
    tracking = _tracking(tmp_path)
    client = MlflowClient(tracking.uri)
    run_id = client.create_run(tracking.experiment_id).info.run_id
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("a.json", "b.svg", "private.pt"):
        (folder / name).write_text(name)
    log_files(client, run_id, [folder / "a.json", folder / "b.svg"], artifact_path="out")
    assert _artifacts(client, run_id, "out") == ["out/a.json", "out/b.svg"]


def test_the_parent_run_gets_every_report_file_under_report(tmp_path):
    tracking = _tracking(tmp_path)
    report = tmp_path / "report"
    report.mkdir()
    for name in ("report.md", "report.html", "pareto.png"):
        (report / name).write_text(name)
    close_parent_run(tracking, report, tmp_path / "results")
    client = MlflowClient(tracking.uri)
    assert _artifacts(client, tracking.parent_run_id, "report") == [
        "report/pareto.png",
        "report/report.html",
        "report/report.md",
    ]
    assert client.get_run(tracking.parent_run_id).info.status == "FINISHED"


def test_a_recorder_pickled_while_its_parent_run_opened_reads_the_saved_state(tmp_path):
    from concurrent.futures import Future

    from widthtune.platform.recorder import TrialRecorder

    opening: Future = Future()
    recorder = TrialRecorder(str(tmp_path), "s", opening, "hash", uri=sqlite_uri(tmp_path))
    restored = pickle.loads(pickle.dumps(recorder))  # as Tune saves it with the Tuner, before the run opened
    tracking = _tracking(tmp_path)
    saved = {
        "uri": tracking.uri,
        "experiment_id": tracking.experiment_id,
        "parent_run_id": tracking.parent_run_id,
    }
    (tmp_path / EXPERIMENT_FILE).write_text(json.dumps({"tracking": saved}))
    assert restored.opened() == Tracking(**saved)
    heard = []
    live = TrialRecorder(str(tmp_path), "s", opening, "hash", uri=tracking.uri, on_opened=heard.append)
    opening.set_result(tracking)
    assert live.opened() is tracking and heard == [tracking]
    assert pickle.loads(pickle.dumps(live)).tracking == tracking


@pytest.mark.usefixtures("local_ray")
def test_a_run_stopped_while_its_parent_run_opened_gets_one_on_resume(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from widthtune.platform.config import validate_config
    from widthtune.platform.runner import create_experiment, execute, read_state

    config = validate_config(
        {"name": "opening", "model": "resnet_cifar:depth=8", "method": "uniform", "storage": str(tmp_path)}
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        directory, opening = create_experiment(config, pool)
        assert read_state(directory)["tracking"]["parent_run_id"] is None  # pending while the store migrates
        orphan = opening.result()  # opened, but the driver stops before the state records it
    state = read_state(directory)
    state["studies"] = {key: "done" for key in state["studies"]}  # nothing left to train
    (directory / EXPERIMENT_FILE).write_text(json.dumps(state))
    execute(directory, say=lambda _: None)
    tracking = Tracking(**read_state(directory)["tracking"])
    assert tracking.parent_run_id not in (None, orphan.parent_run_id)
    assert MlflowClient(tracking.uri).get_run(tracking.parent_run_id).info.status == "FINISHED"
