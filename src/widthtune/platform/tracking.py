"""MLflow tracking: one experiment per config name, a parent run per widthtune experiment, a child run per trial.

Only the driver talks to MLflow (trials may run on other nodes that cannot reach a local sqlite store). The
default store is sqlite inside the experiment directory, created by the driver before any trial starts.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from widthtune.analysis.report import comparison
from widthtune.results.files import EXPERIMENT_FILE

PARENT_TAG = "mlflow.parentRunId"
TRIAL_KEY_TAG = "widthtune.trial_key"
MAX_PARAM_LENGTH = 500
# MLflow's limits on one log_batch: params, and items of all kinds
MAX_PARAMS = 100
MAX_BATCH = 1000
SQLITE_FILE = "mlflow.db"  # the default store, in the experiment folder
# the MLflow UI opens a classic ML experiment on its runs table (not the GenAI overview)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML = "custom_model_development"


@dataclass(frozen=True)
class Tracking:
    """Where the experiment's runs live: the store, the MLflow experiment and the widthtune parent run."""

    uri: str
    experiment_id: str
    parent_run_id: str
    # tags every run carries: where the code came from and who ran it
    source: Mapping[str, str] = field(default_factory=dict)

    def client(self) -> MlflowClient:
        """A client for this store (cheap; made where it is used, never global)."""
        return MlflowClient(tracking_uri=self.uri)


def saved_tracking(directory: Path | str) -> Tracking:
    """The experiment's tracking as its saved state records it (what a recorder that Tune restored reads)."""
    return Tracking(**json.loads((Path(directory) / EXPERIMENT_FILE).read_text())["tracking"])


def sqlite_uri(directory: Path) -> str:
    """The default store: a sqlite file in the experiment directory (absolute path)."""
    return f"sqlite:///{(directory / SQLITE_FILE).resolve()}"


def quoted(value: str) -> str:
    """A value for an MLflow filter string, quoted so that no value can change the filter."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} has both quote characters and cannot be searched for in MLflow")


def source_tags(config_hash: str) -> dict[str, str]:
    """Who ran what: the git commit of widthtune's source tree (when it is a checkout), the user, the config."""
    tags = {"mlflow.source.name": "widthtune", "widthtune.config_hash": config_hash}
    with contextlib.suppress(KeyError, OSError):
        tags["mlflow.user"] = getpass.getuser()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if commit.returncode == 0 and commit.stdout.strip():
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def ui_command(uri: str, experiment_id: str | None = None) -> str:
    """The exact command that opens the MLflow UI on this store (and the page of the experiment's runs)."""
    page = f"/#/experiments/{experiment_id}?workflowType=machine_learning" if experiment_id else ""
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1, then open http://127.0.0.1:5000{page}"
    return f"open {uri.rstrip('/')}{page} in a browser (MLflow tracking server)"


def open_parent_run(
    uri: str,
    experiment_name: str,
    artifact_root: Path,
    run_name: str,
    tags: Mapping[str, str],
    source: Mapping[str, str] | None = None,
) -> Tracking:
    """Create (or reuse) the MLflow experiment (a classic ML one) and start this widthtune experiment's parent run."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        location = artifact_root.resolve().as_uri() if uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(
            experiment_name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: CLASSIC_ML}
        )
    else:
        experiment_id = experiment.experiment_id
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML)
    source = dict(source or {})
    run = client.create_run(
        experiment_id, run_name=run_name, tags={"widthtune.role": "experiment", **source, **tags}
    )
    return Tracking(uri, experiment_id, run.info.run_id, source)


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch of a trial as its MLflow run gets it: the metrics, at step `epoch`, stamped when reported."""

    epoch: int
    values: Mapping[str, float]
    timestamp_ms: int


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


class TrialRuns:
    """Child runs keyed by trial; finds an existing run after a resume, and never logs an epoch twice.

    The experiment's existing trial runs are listed once, on first use, so a new trial's run is created without a
    search; what was logged at a run's creation is remembered, so closing it needs no read back. A new run's params
    travel with its first epoch's metrics (or its outcome), one round-trip fewer per trial.
    """

    def __init__(self, tracking: Tracking) -> None:
        self.tracking = tracking
        self.client = tracking.client()
        self.run_ids: dict[str, str] = {}
        self.logged_epochs: dict[str, set[int]] = {}  # per run, the epochs MLflow holds
        self.logged_params: dict[str, set[str]] = {}
        self.unsent: dict[str, list[Param]] = {}  # a new run's params, sent with its next batch
        self.artifact_uris: dict[str, str] = {}  # where each run's files go (known once it is made or found)
        self.created = 0  # runs this object created (a backfill counts what was missing)
        self._existing: dict[str, str] | None = None

    def _existing_runs(self) -> dict[str, str]:
        """Trial key -> run id of the runs already in the experiment (listed once)."""
        if self._existing is None:
            self._existing = {}
            token = None
            while True:
                page = self.client.search_runs(
                    [self.tracking.experiment_id],
                    filter_string=f"tags.`{TRIAL_KEY_TAG}` LIKE '%'",
                    max_results=1000,
                    page_token=token,
                )
                for run in page:
                    self._existing.setdefault(run.data.tags[TRIAL_KEY_TAG], run.info.run_id)
                token = page.token
                if not token:
                    break
        return self._existing

    def run_for(self, key: str, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
        """The trial's child run: found by its key tag (its missing params then queued), else created with its
        tags, its params queued for the next batch."""
        if key in self.run_ids:
            return self.run_ids[key]
        run_id = self._existing_runs().get(key)
        if run_id is not None:
            history = self.client.get_metric_history(run_id, "epoch")
            self.logged_epochs[key] = {int(m.value) for m in history}
            found = self.client.get_run(run_id)
            held = set(found.data.params)
            self.artifact_uris[key] = found.info.artifact_uri
        else:
            run = self.client.create_run(
                self.tracking.experiment_id,
                run_name=name,
                tags={
                    PARENT_TAG: self.tracking.parent_run_id,
                    TRIAL_KEY_TAG: key,
                    **self.tracking.source,
                    **tags,
                },
            )
            run_id = run.info.run_id
            self.artifact_uris[key] = run.info.artifact_uri
            self.created += 1
            self.logged_epochs[key] = set()
            held = set()
            self._existing_runs()[key] = run_id
        items = [
            Param(k, _param_value(v)) for k, v in sorted(params.items()) if v is not None and k not in held
        ]
        self.unsent[key] = items
        self.logged_params[key] = held | {p.key for p in items}
        self.run_ids[key] = run_id
        return run_id

    def _unlogged(self, key: str, epochs: Sequence[EpochMetrics]) -> list[Metric]:
        """The epochs the run lacks, as MLflow metrics at step=epoch."""
        done = self.logged_epochs.setdefault(key, set())
        unique = {
            e.epoch: e for e in reversed(epochs) if e.epoch not in done
        }  # the first report of each wins
        return [
            Metric(name, float(value), e.timestamp_ms, e.epoch)
            for e in sorted(unique.values(), key=lambda e: e.epoch)
            for name, value in e.values.items()
        ]

    def _logged(self, key: str, epochs: Sequence[EpochMetrics]) -> None:
        self.logged_epochs.setdefault(key, set()).update(e.epoch for e in epochs)

    def log_epochs(self, key: str, epochs: Sequence[EpochMetrics]) -> None:
        """Epochs in one batch, each once (those already logged, e.g. before a resume, are skipped)."""
        items = self._unlogged(key, epochs)
        if items:
            self._send(key, metrics=items)
        self._logged(key, epochs)

    def _send(
        self,
        key: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
    ) -> None:
        """One batch with the run's unsent params in front; more only past MLflow's limits on a batch (100
        params, 1000 metrics, 1000 items in all)."""
        params = [*self.unsent.pop(key, []), *params]
        run_id = self.run_ids[key]
        first = MAX_BATCH - min(len(params), MAX_PARAMS) - len(tags)
        self.client.log_batch(
            run_id, metrics=list(metrics[:first]), params=params[:MAX_PARAMS], tags=list(tags)
        )
        for start in range(MAX_PARAMS, len(params), MAX_PARAMS):
            self.client.log_batch(run_id, params=params[start : start + MAX_PARAMS])
        for start in range(first, len(metrics), MAX_BATCH):
            self.client.log_batch(run_id, metrics=list(metrics[start : start + MAX_BATCH]))

    def finish(
        self,
        key: str,
        status: str,
        tags: Mapping[str, str],
        artifacts: list[Path],
        params: Mapping[str, Any] | None = None,
        epochs: Sequence[EpochMetrics] = (),
    ) -> None:
        """Tag the outcome, log what was trained, attach artifacts, close the run.

        A trial a scheduler stopped ended normally: FINISHED, with `widthtune.status=stopped`; only an error is
        FAILED. Params logged here (the trained widths) are those not logged at the run's start; `epochs` not
        sent yet go in the same batch.
        """
        run_id = self.run_ids[key]
        logged = self.logged_params[key]
        items = [Param(k, _param_value(v)) for k, v in sorted((params or {}).items()) if k not in logged]
        outcome = [RunTag(k, _param_value(v)) for k, v in tags.items()]
        self._send(key, metrics=self._unlogged(key, epochs), params=items, tags=outcome)
        self._logged(key, epochs)
        logged.update(p.key for p in items)
        if artifacts:
            log_files(artifact_repository(self.tracking.uri, self.artifact_uris[key]), artifacts)
        mlflow_status = "FAILED" if status == "errored" else "FINISHED"
        self.client.set_terminated(run_id, status=mlflow_status)


def artifact_repository(uri: str, artifact_uri: str) -> ArtifactRepository:
    """A run's artifact store from its artifact URI (known when the run is made: no read of the run to find it)."""
    return get_artifact_repository(artifact_uri, tracking_uri=uri)


def run_artifacts(uri: str, run_id: str) -> ArtifactRepository:
    """The artifact store of a run whose artifact URI is not at hand (one read of the run)."""
    return artifact_repository(uri, MlflowClient(tracking_uri=uri).get_run(run_id).info.artifact_uri)


def log_files(
    repository: ArtifactRepository, paths: Sequence[Path], artifact_path: str | None = None
) -> None:
    """Attach files to a run: one call for a folder that holds exactly these files (a round-trip per file
    costs a short trial more than its MLflow metrics do), else one call per file."""
    folders = {Path(p).parent for p in paths}
    if len(folders) == 1 and len(paths) > 1:
        folder = folders.pop()
        if sorted(folder.iterdir()) == sorted(Path(p) for p in paths):
            repository.log_artifacts(str(folder), artifact_path=artifact_path)
            return
    for path in paths:
        repository.log_artifact(str(path), artifact_path=artifact_path)


class TrackingGuard:
    """Tracking is secondary to results: the first failure to reach MLflow prints one warning for the whole run
    (a marker file in the experiment folder tells every guard of the run), and every later call is skipped; the
    Parquet store still gets everything and `widthtune sync DIR` backfills MLflow."""

    MARKER = ".mlflow-unreachable"

    def __init__(self, uri: str, directory: Path | str) -> None:
        self.uri = uri
        self.directory = str(directory)

    @property
    def marker(self) -> Path:
        """The file that says this run has given up on MLflow."""
        return Path(self.directory) / self.MARKER

    @property
    def down(self) -> bool:
        """Whether MLflow failed earlier in this run."""
        return self.marker.exists()

    def reset(self) -> None:
        """A new run (or resume) tries MLflow again."""
        self.marker.unlink(missing_ok=True)

    def call(self, action: Any, *args: Any, **kwargs: Any) -> Any:
        """`action(*args, **kwargs)`, or None once MLflow has failed."""
        if self.down:
            return None
        try:
            return action(*args, **kwargs)
        except (
            Exception
        ) as error:  # MLflow's, requests' and the socket's errors alike: never a trial's problem
            self.marker.write_text(f"{type(error).__name__}: {error}\n")
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            print(
                f"widthtune: warning: MLflow at {self.uri} failed ({type(error).__name__}: {first}); results go on "
                f"to the Parquet store; `widthtune sync {self.directory}` copies them to MLflow later",
                file=sys.stderr,
            )
            return None


def summary_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per method and cost target: the comparison table's figures, as the parent run's metrics."""
    out: dict[str, float] = {}
    for row in comparison(rows):
        name = re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", f"{row.label}/{row.cost_target}")
        for field_name in ("test_acc_mean", "test_acc_std", "val_acc_mean", "macs_mean", "params_mean"):
            value = getattr(row, field_name)
            if value == value:  # not NaN
                out[f"{name}/{field_name}"] = float(value)
        out[f"{name}/trials"] = float(row.trials)
    return out


def close_parent_run(tracking: Tracking, report: Path, rows: list[dict[str, Any]]) -> None:
    """The parent run gets the summary metrics per method (from the stored trial `rows`), the report with its
    figures, and FINISHED."""
    client = tracking.client()
    metrics = summary_metrics(rows)
    stamp = int(time.time() * 1000)
    items = [Metric(k, v, stamp, 0) for k, v in sorted(metrics.items())]
    for start in range(0, len(items), 500):
        client.log_batch(tracking.parent_run_id, metrics=items[start : start + 500])
    files = [path for path in sorted(report.iterdir()) if path.is_file()] if report.is_dir() else []
    if files:
        log_files(run_artifacts(tracking.uri, tracking.parent_run_id), files, artifact_path="report")
    client.set_terminated(tracking.parent_run_id, status="FINISHED")
