"""A trial's MLflow child run in few round-trips holds everything (params, epochs, trained widths, artifacts), and
a parent run opened while Tune starts reaches the recorder and the saved state."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from widthtune.platform.tracking import (
    EpochMetrics,
    Tracking,
    TrialRuns,
    close_parent_run,
    log_files,
    open_parent_run,
    run_artifacts,
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
    runs.log_epochs("s__1", [EpochMetrics(1, {"val_acc": 0.5, "epoch": 1.0}, 1000)])
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
    first.log_epochs("s__3", [EpochMetrics(1, {"epoch": 1.0}, 1000)])
    again = TrialRuns(tracking)  # a resumed driver: the run is found by its key tag
    assert again.run_for("s__3", "s/3", {}, {"train.lr": 0.3, "method.seed": 4}) == run_id
    again.log_epochs("s__3", [EpochMetrics(1, {"epoch": 1.0}, 2000)])  # already logged: skipped
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
    log_files(run_artifacts(tracking.uri, run_id), [folder / "a.json", folder / "b.svg"], artifact_path="out")
    assert _artifacts(client, run_id, "out") == ["out/a.json", "out/b.svg"]


def test_the_parent_run_gets_every_report_file_under_report(tmp_path):
    tracking = _tracking(tmp_path)
    report = tmp_path / "report"
    report.mkdir()
    for name in ("report.md", "report.html", "pareto.png"):
        (report / name).write_text(name)
    close_parent_run(tracking, report, [])
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
    live.on_step_end(0, [])
    assert heard == []  # Tune's thread never waits for the opening
    opening.set_result(tracking)
    live.on_step_end(0, [])
    live.on_step_end(0, [])
    assert heard == [tracking]  # recorded once, on Tune's thread
    assert live.opened() is tracking
    assert pickle.loads(pickle.dumps(live)).tracking == tracking


@pytest.mark.timeout(120)  # a recorder that waited for the opening on Tune's thread would hang here
def test_a_trial_that_ends_while_the_parent_run_opens_is_stored_at_once_and_gets_its_run_id(tmp_path):
    from concurrent.futures import Future

    from widthtune.platform.recorder import TrialRecorder
    from widthtune.results.store import read_trial

    opening: Future = Future()
    heard = []
    recorder = TrialRecorder(
        str(tmp_path), "s", opening, "hash", uri=sqlite_uri(tmp_path), on_opened=heard.append
    )
    _recorded_trial(recorder, "early", epochs=2)  # on Tune's thread: returns although MLflow is not open yet
    row = read_trial(tmp_path / "results", "s__early")
    assert row["status"] == "completed" and row["mlflow_run_id"] is None and heard == []
    tracking = _tracking(tmp_path)
    opening.set_result(tracking)
    recorder.on_experiment_end([])
    assert heard == [tracking]
    row = read_trial(tmp_path / "results", "s__early")
    run = MlflowClient(tracking.uri).get_run(row["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["widthtune.trial_key"] == "s__early"
    assert run.data.metrics["val_acc"] == pytest.approx(0.2)


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


def _recorded_trial(recorder, trial_id: str, epochs: int, *, close: bool = True):
    """A stub Tune trial through the recorder: started, `epochs` results, then (when `close`) completed."""
    from ray.tune.experiment import Trial

    config = {"model": "resnet_cifar:depth=8", "method": "uniform", "label": "uniform", "seed": 0}
    config["train.epochs"] = epochs
    trial = Trial("fn", config=config, trial_id=trial_id, stub=True)
    recorder.on_trial_start(0, [], trial)
    for epoch in range(1, epochs + 1):
        result = {"epoch": epoch, "val_acc": 0.1 * epoch, "test_acc": 0.1, "epochs": epochs, "config": config}
        trial.update_last_result(result)
        recorder.on_trial_result(0, [], trial, result)
    if close:
        recorder.on_trial_complete(0, [], trial)
    return trial


def _batches(recorder) -> list[int]:
    """Counts the recorder's MLflow batches (the real client's calls, counted as they go out)."""
    client = recorder.runs.client
    sent: list[int] = []
    real = client.log_batch

    def counted(run_id, metrics=(), params=(), tags=(), **kwargs):
        sent.append(len(metrics))
        return real(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    client.log_batch = counted
    return sent


def test_a_young_trials_epochs_ride_with_its_outcome_and_an_older_trials_go_out_live(tmp_path, monkeypatch):
    from widthtune.platform import recorder as recording

    tracking = _tracking(tmp_path)
    recorder = recording.TrialRecorder(str(tmp_path), "s", tracking, "hash")
    sent = _batches(recorder)
    _recorded_trial(recorder, "young", epochs=2)
    recorder.drain()
    client = MlflowClient(tracking.uri)
    (young,) = client.search_runs([tracking.experiment_id], "tags.`widthtune.trial_key` = 's__young'")
    assert young.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(young.info.run_id, "val_acc")] == [1, 2]
    assert len(sent) == 1 and sent[0] > 0  # both epochs went with the outcome, in one batch

    monkeypatch.setattr(recording, "LIVE_SECONDS", 0.0)  # every trial is old enough to show live
    sent.clear()
    trial = _recorded_trial(recorder, "live", epochs=2, close=False)
    recorder.drain()
    (live,) = client.search_runs([tracking.experiment_id], "tags.`widthtune.trial_key` = 's__live'")
    assert live.info.status == "RUNNING" and live.data.metrics["val_acc"] == pytest.approx(0.2)
    assert len(sent) == 2  # one batch per epoch, while the trial runs
    recorder.on_trial_complete(0, [], trial)
    recorder.drain()
    assert client.get_run(live.info.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(live.info.run_id, "val_acc")] == [1, 2]


def test_epochs_held_when_the_experiment_ends_still_go_out(tmp_path):
    from widthtune.platform.recorder import TrialRecorder

    tracking = _tracking(tmp_path)
    recorder = TrialRecorder(str(tmp_path), "s", tracking, "hash")
    _recorded_trial(recorder, "cut", epochs=1, close=False)  # interrupted: no outcome
    recorder.on_experiment_end([])
    client = MlflowClient(tracking.uri)
    (run,) = client.search_runs([tracking.experiment_id], "tags.`widthtune.trial_key` = 's__cut'")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1]


def test_a_batch_past_mlflows_limits_goes_out_in_parts_and_loses_nothing(tmp_path):
    tracking = _tracking(tmp_path)
    runs = TrialRuns(tracking)
    params = {f"p{i:03d}": i for i in range(150)}
    run_id = runs.run_for("s__big", "s/big", {}, params)
    epochs = [EpochMetrics(e, {f"m{i:02d}": float(e) for i in range(60)}, 1000 + e) for e in range(1, 21)]
    runs.finish("s__big", "completed", {"widthtune.status": "completed"}, [], epochs=epochs)
    client = MlflowClient(tracking.uri)
    run = client.get_run(run_id)
    assert len(run.data.params) == 150 and len(run.data.metrics) == 60
    assert [m.step for m in client.get_metric_history(run_id, "m59")] == list(range(1, 21))
    assert run.data.tags["widthtune.status"] == "completed"


def test_an_epoch_a_killed_driver_never_sent_reaches_the_run_with_its_outcome(tmp_path):
    tracking = _tracking(tmp_path)
    killed = TrialRuns(tracking)
    run_id = killed.run_for("s__k", "s/k", {}, {"train.lr": 0.1})  # epoch 1 was held when the driver died
    resumed = TrialRuns(tracking)
    assert resumed.run_for("s__k", "s/k", {}, {"train.lr": 0.1}) == run_id
    resumed.log_epochs(
        "s__k", [EpochMetrics(e, {"epoch": float(e), "val_acc": 0.1 * e}, 1000) for e in (2, 3)]
    )
    journal = [EpochMetrics(e, {"epoch": float(e), "val_acc": 0.1 * e}, 2000) for e in (1, 2, 3)]
    resumed.finish("s__k", "completed", {"widthtune.status": "completed"}, [], epochs=journal)
    history = MlflowClient(tracking.uri).get_metric_history(run_id, "val_acc")
    assert sorted(m.step for m in history) == [1, 2, 3]  # the missing one added, none twice
