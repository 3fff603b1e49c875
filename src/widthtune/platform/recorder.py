"""The driver-side Tune callback that records every trial: epoch journal, MLflow child run, Parquet rows."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ray import tune

from widthtune.analysis.profile_svg import PROFILE_SVG, width_profile_svg
from widthtune.models.artifact import WIDTHS_FILE, make_artifact
from widthtune.models.cost import CostModel
from widthtune.platform.tracking import EpochMetrics, Tracking, TrackingGuard, TrialRuns, saved_tracking
from widthtune.results.store import EpochJournal, read_trial, write_trial
from widthtune.trainables.adapter import reported_widths
from widthtune.trainables.retraining import Retraining
from widthtune.trainables.trial import expand_bundle
from widthtune.training.datasets import DataSpec
from widthtune.training.loop import TrainConfig

# transfer provenance: flat config key -> trial row column (also an MLflow tag, widthtune.<key>)
TRANSFER_COLUMNS = {
    "transfer.projection": "projection",
    "transfer.extrapolation": "extrapolation",
    "transfer.source_trial": "source_trial_key",
    "transfer.source_run_id": "source_run_id",
    "transfer.overhead_ratio": "overhead_ratio",
    "transfer.overhead_flops": "overhead_flops",
    "transfer.overhead_seconds": "overhead_seconds",
}

# a trial's epochs reach MLflow at most this many seconds after it started (see TrialRecorder)
LIVE_SECONDS = 2.0

EPOCH_METRICS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "lr",
    "seconds",
    "images_per_second",
    "images_seen",
    "train_flops",
    "macs",
    "params",
    "search_flops",
)


def epoch_values(record: dict[str, Any]) -> dict[str, float]:
    """An epoch's metrics for its MLflow run: the numeric ones of `EPOCH_METRICS`."""
    return {k: float(record[k]) for k in EPOCH_METRICS if isinstance(record.get(k), int | float)}


def trial_key(study: str, trial_id: str) -> str:
    """A trial's name in the store and in MLflow: unique across the experiment's studies."""
    return f"{study}__{trial_id}"


def error_reason(trial: Any) -> str:
    """The last line of the trial's error: exception type and message, without the traceback."""
    try:
        error = trial.get_pickled_error()
    except Exception:
        error = None
    cause = getattr(error, "cause", None) or error
    if cause is not None:
        text = "".join(traceback.format_exception_only(type(cause), cause)).strip()
        return text.splitlines()[-1] if text else type(cause).__name__
    if trial.error_file and Path(trial.error_file).is_file():
        lines = [line for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
        return lines[-1] if lines else "error"
    return "error"


def logged_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's params for MLflow: a searched width vector is a direction (`direction.*`) until it is matched;
    the trained widths are logged as `widths.*` when the trial ends."""
    return {
        (f"direction.{k[len('widths.') :]}" if k.startswith("widths.") else k): v for k, v in config.items()
    }


def trial_tags(config: dict[str, Any], study: str, role: str, config_hash: str) -> dict[str, str]:
    """A trial run's tags in MLflow (the same when the recorder logs it live and when `sync` backfills it)."""
    transfer = {f"widthtune.{k}": str(config[k]) for k in TRANSFER_COLUMNS if config.get(k) is not None}
    return transfer | {
        "widthtune.method": str(config.get("method")),
        "widthtune.label": str(config.get("label")),
        "widthtune.role": str(config.get("role", role)),
        "widthtune.study": study,
        "widthtune.model": str(config.get("model")),
        "widthtune.dataset": str(config.get("data.name", DataSpec.name)),
        "widthtune.cost_target": json.dumps(
            {k.split(".", 1)[1]: v for k, v in config.items() if k.startswith("cost_target.")}
        ),
        "widthtune.seed": str(config.get("seed")),
        "widthtune.retrain": str(config.get("retrain.mode", Retraining.mode)),
        "widthtune.config_hash": config_hash,
    }


def finish_run(
    runs: TrialRuns, row: dict[str, Any], artifacts: list[Path], epochs: Sequence[EpochMetrics] = ()
) -> None:
    """Close a stored trial's run: its outcome, its trained widths as params, its artifacts (and any of its
    epochs not sent yet, in the same batch)."""
    outcome = {"widthtune.status": row["status"]}
    if row.get("error"):
        outcome["widthtune.error"] = row["error"]
    trained = {
        f"widths.{n}": w for n, w in zip(row.get("group_names") or [], row.get("widths") or [], strict=True)
    }
    runs.finish(row["trial_key"], row["status"], outcome, artifacts, params=trained, epochs=epochs)


class TrialRecorder(tune.Callback):
    """Journals each result, logs it to the trial's MLflow child run, and stores the trial when it ends.

    Picklable (Tune saves it with the run); its clients and caches are rebuilt after a restore. `tracking` may be
    the parent run still opening on another thread (the sqlite store migrates while Tune starts): the writer thread
    waits for it, and Tune's thread hands it to `on_opened` once it is open; pickled before then, it reads the
    saved state instead.

    MLflow calls run in order on one writer thread, so Tune's loop (which starts the next trial) never waits on
    the tracking store, not even for the parent run still opening; the Parquet store is written on Tune's thread.
    A trial's run is made when the trial starts; a row stored before its run existed gets the run's id when the
    run is closed; the experiment's end waits until every call has gone out. A trial's epochs reach its run at
    most `LIVE_SECONDS` after the trial started: a younger trial's wait for its next batch, so a short trial's
    epochs ride with its outcome (every MLflow call costs the driver CPU that the trials train with).
    """

    def __init__(
        self,
        directory: str,
        study: str,
        tracking: Tracking | Future,
        config_hash: str,
        role: str = "trial",
        uri: str | None = None,
        on_opened: Callable[[Tracking], None] | None = None,
    ):
        self.directory = directory
        self.study = study
        self._opening = tracking if isinstance(tracking, Future) else None
        self.tracking: Tracking | None = None if self._opening is not None else tracking
        self.uri = uri if self.tracking is None else self.tracking.uri
        self.config_hash = config_hash
        self.role = role
        self._on_opened = on_opened
        self._runs: TrialRuns | None = None
        self._guard: TrackingGuard | None = None
        self._costs: dict[str, CostModel] = {}
        self._writer: ThreadPoolExecutor | None = None
        self._run_ids: dict[str, Future] = {}
        self._started: dict[str, float] = {}  # trial key -> when its run was asked for (monotonic)
        self._held: dict[str, list[EpochMetrics]] = {}  # epochs of young trials, not sent yet

    @staticmethod
    def _transient() -> dict[str, Any]:
        """What lives in this process only (clients, threads, queued work): rebuilt after pickling."""
        return {
            "_runs": None,
            "_guard": None,
            "_costs": {},
            "_opening": None,
            "_on_opened": None,
            "_writer": None,
            "_run_ids": {},
            "_started": {},
            "_held": {},
        }

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        opening = state.pop("_opening", None)
        if state["tracking"] is None and opening is not None and opening.done() and not opening.exception():
            state["tracking"] = opening.result()
        return state | self._transient()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"uri": None} | state | self._transient())

    def opened(self) -> Tracking:
        """The experiment's tracking, waited for when it is still opening (on the writer thread)."""
        if self.tracking is None:
            if self._opening is not None:
                self.tracking = self._opening.result()
            else:
                self.tracking = saved_tracking(self.directory)
        return self.tracking

    def _record_opened(self) -> None:
        """On Tune's thread, once the parent run has opened: its ids go to the saved state (whose only writer
        that thread is), without waiting for it."""
        opening = self._opening
        if self._on_opened is None or opening is None or not opening.done():
            return
        record, self._on_opened = self._on_opened, None
        if opening.exception() is None:
            record(opening.result())

    def cost_model(self, spec: str) -> CostModel:
        """The spec's cost model, traced once per recorder (the driver prices every stored trial's widths)."""
        if spec not in self._costs:
            self._costs[spec] = CostModel.from_spec(spec)
        return self._costs[spec]

    @property
    def guard(self) -> TrackingGuard:
        """MLflow calls go through here: once the tracking store fails, the rest of the run skips it."""
        if self._guard is None:
            self._guard = TrackingGuard(self.uri or self.opened().uri, self.directory)
        return self._guard

    @property
    def runs(self) -> TrialRuns:
        """MLflow child runs (made on first use in this process)."""
        if self._runs is None:
            self._runs = TrialRuns(self.opened())
        return self._runs

    @property
    def results_root(self) -> Path:
        """The Parquet store."""
        return Path(self.directory) / "results"

    def _later(self, action: Callable[..., Any], *args: Any) -> Future:
        """`action(*args)` through the guard on the writer thread, after every call queued before it."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="widthtune-mlflow")
        return self._writer.submit(self.guard.call, action, *args)

    def drain(self) -> None:
        """Wait until every queued MLflow call has gone out."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def _run(self, trial: Any) -> Future:
        """The trial's run id (None once MLflow is down), made or found on the writer thread."""
        key = trial_key(self.study, trial.trial_id)
        if key not in self._run_ids:
            config = expand_bundle(trial.config)
            tags = trial_tags(config, self.study, self.role, self.config_hash)
            name = f"{self.study}/{trial.trial_id}"
            self._run_ids[key] = self._later(self._run_for, key, name, tags, logged_params(config))
            self._started[key] = time.monotonic()
        return self._run_ids[key]

    def _run_for(self, key: str, name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        return self.runs.run_for(key, name, tags, params)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Open the trial's run while it trains."""
        self._record_opened()
        if not self.guard.down:
            self._run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Journal and log one epoch."""
        if "error" in result:
            return
        key = trial_key(self.study, trial.trial_id)
        record = {k: result[k] for k in EPOCH_METRICS if k in result}
        EpochJournal(self.results_root).append(key, record)
        if self.guard.down:
            return
        self._run(trial)
        epoch = EpochMetrics(int(result["epoch"]), epoch_values(record), int(time.time() * 1000))
        self._held.setdefault(key, []).append(epoch)
        if time.monotonic() - self._started[key] >= LIVE_SECONDS:
            self._send_held(key)

    def _send_held(self, key: str) -> None:
        """The trial's held epochs to its run, in one batch."""
        epochs = self._held.pop(key, [])
        if epochs:
            self._later(self._log_epochs, key, epochs)

    def _log_epochs(self, key: str, epochs: list[EpochMetrics]) -> None:
        if self._run_ids[key].result() is not None:  # done: queued before this call
            self.runs.log_epochs(key, epochs)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Epochs held for trials that are no longer young go out (a slow second epoch never delays the first)."""
        self._record_opened()
        if self._held:
            now = time.monotonic()
            for key in [k for k in self._held if now - self._started[k] >= LIVE_SECONDS]:
                self._send_held(key)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Tune ends (or was interrupted): held epochs and every queued MLflow call go out first."""
        for key in list(self._held):
            self._send_held(key)
        self.drain()
        self._record_opened()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial finished, was stopped by the scheduler, or reported a non-finite loss."""
        last = trial.last_result or {}
        self._store(trial, last.get("error"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial raised (after its retries): record it as errored with its reason."""
        self._store(trial, error_reason(trial))

    def _store(self, trial: Any, error: str | None) -> None:
        key = trial_key(self.study, trial.trial_id)
        config = expand_bundle(trial.config)
        last = trial.last_result or {}
        epochs = EpochJournal(self.results_root).read(key)
        run = None if self.guard.down else self._run(trial)
        run_id = run.result() if run is not None and run.done() else None  # else filled in when it closes
        planned = int(last.get("epochs") or config.get("train.epochs", TrainConfig.epochs))
        trained = max((int(e["epoch"]) for e in epochs), default=0)
        status = "errored" if error else ("completed" if trained >= planned else "stopped")
        row: dict[str, Any] = {
            "trial_key": key,
            "trial_id": trial.trial_id,
            "experiment": config.get("experiment"),
            "study": self.study,
            "method": config.get("method"),
            "label": config.get("label"),
            "role": config.get("role", self.role),
            "config_hash": self.config_hash,
            "model": config.get("model"),
            "dataset": config.get("data.name", DataSpec.name),
            "seed": config.get("seed"),
            "epochs_planned": planned,
            "epochs_trained": trained,
            "status": status,
            "error": error,
            "params_json": json.dumps(config, sort_keys=True, default=str),
            "mlflow_run_id": run_id,
            "finished_at": time.time(),
        }
        for name in (
            "cost_target",
            "cost_convention",
            "cost_target_label",
            "multiplier",
            "macs",
            "flops",
            "params",
        ):
            row[name] = last.get(name)
        for name in ("search_flops", "search_seconds"):
            row[name] = last.get(name)
        row.update({column: config.get(key) for key, column in TRANSFER_COLUMNS.items()})
        row["retrain"] = config.get("retrain.mode", Retraining.mode)
        checkpoint = getattr(trial, "checkpoint", None)
        row["checkpoint"] = checkpoint.path if checkpoint is not None else None
        if epochs:
            final = epochs[-1]
            row.update(
                final_val_acc=final.get("val_acc"),
                final_val_loss=final.get("val_loss"),
                final_test_acc=final.get("test_acc"),
                final_test_loss=final.get("test_loss"),
                train_flops=final.get("train_flops"),
            )
            scored = [e for e in epochs if e.get("val_acc") is not None]
            if scored:
                best = max(scored, key=lambda e: e["val_acc"])
                row.update(
                    best_val_acc=best["val_acc"],
                    best_val_epoch=best["epoch"],
                    test_acc_at_best_val=best["test_acc"],
                )
        row["wall_seconds"] = (last.get("search_seconds") or 0.0) + sum(e.get("seconds", 0.0) for e in epochs)
        artifacts: list[Path] = []
        widths = reported_widths(last)
        if widths:
            cost_model = self.cost_model(str(config["model"]))
            space = cost_model.space
            row["group_names"] = list(space.names)
            row["widths"] = [int(widths[n]) for n in space.names]
            row["base_widths"] = [g.base for g in space]
            folder = Path(self.directory) / "trials" / key
            artifact = make_artifact(
                config["model"],
                widths,
                method=str(config.get("method")),
                provenance={"trial_key": key, "study": self.study, "seed": config.get("seed")},
                cost_model=cost_model,
            )
            artifacts.append(artifact.save(folder / WIDTHS_FILE))
            ratios = [w / b for w, b in zip(row["widths"], row["base_widths"], strict=True)]
            artifacts.append(
                width_profile_svg(space.names, ratios, folder / PROFILE_SVG, title=f"{key} widths / base")
            )
        kept = read_trial(self.results_root, key)
        if kept is not None and kept["status"] == "completed" and status != "completed":
            return  # a stored completed trial is never replaced by a worse row (a torn restore, say)
        stored = [{**e, "study": self.study, "label": row["label"], "seed": row["seed"]} for e in epochs]
        write_trial(self.results_root, row, stored)
        held = self._held.pop(key, [])
        if run is not None:
            # with the held epochs, every journaled one MLflow may lack (sent by a driver killed before it went out)
            stamp = int(time.time() * 1000)
            journaled = [EpochMetrics(int(e["epoch"]), epoch_values(e), stamp) for e in epochs]
            self._later(self._finish, row, stored, artifacts, held + journaled)

    def _finish(
        self,
        row: dict[str, Any],
        stored: list[dict[str, Any]],
        artifacts: list[Path],
        epochs: list[EpochMetrics],
    ) -> None:
        """On the writer thread: close the trial's run; a row stored before its run existed gets the run's id."""
        run_id = self._run_ids[row["trial_key"]].result()  # done: queued before this call
        if run_id is None:
            return
        if row["mlflow_run_id"] is None:
            row = {**row, "mlflow_run_id": run_id}
            write_trial(self.results_root, row, stored)
        finish_run(self.runs, row, artifacts, epochs)
