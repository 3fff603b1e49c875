"""The runner: assembles `tune.Tuner` per study from the config, runs them in order, and resumes them.

The experiment directory holds everything local: `experiment.json` (config, hash, MLflow ids, study status),
`config.yaml`, `mlflow.db` (default store), `results/` (the Parquet store), `tune/` (Tune's checkpoints,
unless `storage` is a URI), and the report.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from widthtune.analysis.report import write_report
from widthtune.platform.artifacts import ArtifactFailed, Built, artifact_dir, artifact_kind
from widthtune.platform.config import ConfigError, ExperimentConfig, validate_config
from widthtune.platform.interruption import ExperimentInterrupted
from widthtune.platform.leftovers import clean_leftovers, remember_ray_session
from widthtune.platform.logs import route_library_logs
from widthtune.platform.planning import plan_studies
from widthtune.platform.progress import ProgressLine
from widthtune.platform.recorder import TrialRecorder
from widthtune.platform.shared_storage import storage_problem
from widthtune.platform.sqlite_template import seed_sqlite_store
from widthtune.platform.studies import Study, make_scheduler, make_searcher
from widthtune.platform.tracking import (
    SQLITE_FILE,
    Tracking,
    TrackingGuard,
    TrialRuns,
    close_parent_run,
    open_parent_run,
    source_tags,
    sqlite_uri,
)
from widthtune.platform.tracking_uri import check_tracking_uri
from widthtune.results.files import EXPERIMENT_FILE, NotWritableError, check_writable
from widthtune.results.roles import ARTIFACT
from widthtune.results.store import read_trials, stored_studies, write_artifact, write_trial
from widthtune.search_spaces.domains import Domain
from widthtune.trainables.adapter import run_trial
from widthtune.trainables.artifacts import ArtifactRecipe
from widthtune.trainables.data_parallel import run_data_parallel_trial
from widthtune.trainables.trial import BUNDLE_KEY

FORMAT = "widthtune.experiment"
# what a data-parallel trial's own process reserves (it holds no CPU: its Ray Train workers do)
COORDINATOR_MEMORY = 256 * 1024 * 1024
# what every experiment state holds
STATE_KEYS = ("config", "config_hash", "tracking", "tune_storage", "studies")


class ExperimentExistsError(ConfigError):
    """The experiment directory is taken: resume it or choose another name."""


def experiment_dir(config: ExperimentConfig) -> Path:
    """The local experiment directory (absolute: trials change their working directory)."""
    root = config.storage if "://" not in config.storage else config.local_dir
    return (Path(root).expanduser() / config.name).resolve()


def tune_storage(config: ExperimentConfig, directory: Path) -> str:
    """Where Tune keeps checkpoints and its experiment state: `tune/` locally, or the storage URI."""
    if "://" in config.storage:
        return f"{config.storage.rstrip('/')}/{config.name}"
    return str(directory / "tune")


def _environment() -> None:
    # Tune's own loggers off: the Parquet store and MLflow hold every result (the JSON logger is added back per
    # study, so each trial folder keeps Tune's result.json); TensorBoard's writer threads and the CSV rows cost
    # the driver CPU per result that the trials would otherwise train with
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress line replaces Tune's tables
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # a tracking server that stops answering costs seconds, not minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # MLflow's usage telemetry costs every client call a record (a third of a short trial's MLflow time here)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def start_ray(config: ExperimentConfig) -> None:
    """Connect to RAY_ADDRESS when set (`auto`: the cluster on this machine), else start a fresh local Ray.

    Then check that some node can hold one trial's resources.
    """
    import ray

    _environment()
    if not ray.is_initialized():
        # no RAY_ADDRESS: a fresh local Ray, never a cluster some other process happens to run here
        address = os.environ.get("RAY_ADDRESS") or "local"
        # A new local cluster keeps Ray's default token authentication (RAY_AUTH_MODE unset): its servers listen
        # beyond loopback (gcs on ::, agents on the node's IP), and a process without this user's
        # ~/.ray/auth_token is refused. Only an explicit RAY_AUTH_MODE=disabled turns that off.
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    alive = [node for node in ray.nodes() if node.get("Alive")]
    nodes = [node["Resources"] for node in alive]
    resources = config.resources
    cpu, gpu = resources.per_process()
    names = ("cpu_per_worker", "gpu_per_worker") if resources.distributed else ("cpu", "gpu")
    for name, key, wanted in ((names[0], "CPU", cpu), (names[1], "GPU", gpu)):
        largest = max((node.get(key, 0) for node in nodes), default=0)
        if wanted > largest:
            raise ConfigError(
                f"resources.{name}: {wanted} per trial, but the largest node of the Ray cluster has {largest} {key}s"
            )
    total_cpu, total_gpu = resources.per_trial()
    for key, wanted in (("CPU", total_cpu), ("GPU", total_gpu)):
        available = sum(node.get(key, 0) for node in nodes)
        if resources.distributed and wanted > available:
            raise ConfigError(
                f"resources: {resources.workers} workers need {wanted:g} {key}s per trial, but the Ray cluster "
                f"has {available:g}; lower resources.workers or the per-worker share"
            )
    problem = storage_problem(config.storage, {str(node.get("NodeManagerAddress")) for node in alive})
    if problem is not None:
        raise ConfigError(problem)


def read_state(directory: Path) -> dict[str, Any]:
    """The experiment's saved state."""
    path = Path(directory).expanduser().resolve() / EXPERIMENT_FILE
    if not path.is_file():
        raise ConfigError(
            f"{str(directory)!r} is not a widthtune experiment directory (no {EXPERIMENT_FILE})"
        )
    damaged = (
        f"{str(path)!r} is damaged ({{}}); the trials stored under results/ are untouched and "
        f"`widthtune report {path.parent}` still reads them; to continue the experiment, restore the file from a "
        "backup, or run its config.yaml again under another name (--set name=...)"
    )
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(damaged.format(f"not readable JSON: {error}")) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{str(path)!r} is not a widthtune experiment state file")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise ConfigError(damaged.format(f"no {', '.join(missing)}"))
    return state


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    partial = directory / (EXPERIMENT_FILE + ".partial")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(partial, directory / EXPERIMENT_FILE)


def trial_dirname(trial: Any) -> str:
    """Trial folders named by trial id (Tune's default packs the whole flat config into the name)."""
    return f"trial_{trial.trial_id}"


def _trainable(config: ExperimentConfig) -> Any:
    from ray import tune

    if config.resources.distributed:
        # the trial's own process only drives Ray Train, whose workers hold the CPUs and GPUs (Tune needs the
        # trial to ask for something: a little memory)
        return tune.with_resources(run_data_parallel_trial, {"cpu": 0, "memory": COORDINATOR_MEMORY})
    return tune.with_resources(run_trial, {"cpu": config.resources.cpu, "gpu": config.resources.gpu})


def torn_tune_state(path: str) -> str | None:
    """Why Tune's saved state of a study cannot be trusted (a file cut short, e.g. by a full disk), or None."""
    if "://" in path or not Path(path).is_dir():
        return None
    states = sorted(Path(path).glob("experiment_state-*.json"))
    if not states:
        return None
    try:
        json.loads(states[-1].read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{states[-1].name}: {error}"
    return None


def remaining_work(study: Study, rows: list[dict[str, Any]]) -> Study:
    """The part of a study the store does not hold yet: the grid combinations no stored trial ran (as one
    bundled grid), or for sampled spaces, as many new samples as trials are missing."""
    stored = [json.loads(r["params_json"] or "{}") for r in rows if r["study"] == study.key]
    grids = {k: d for k, d in study.domains.items() if d.kind == "grid"}
    if len(grids) == len(study.domains) and study.num_samples == 1 and study.width_space is None:
        combos = [
            dict(zip(grids, values, strict=True))
            for values in itertools.product(*(d.values for d in grids.values()))
        ]
        done = [c for c in combos if any(all(s.get(k) == v for k, v in c.items()) for s in stored)]
        left = tuple(c for c in combos if c not in done)
        return dataclasses.replace(study, domains={BUNDLE_KEY: Domain("grid", left)})
    return dataclasses.replace(study, num_samples=max(0, study.expected_trials - len(stored)))


def _tuner(
    study: Study,
    config: ExperimentConfig,
    directory: Path,
    state: dict[str, Any],
    say: Callable[[str], None],
    opening: Future | None = None,
    opened: Callable[[Tracking], None] | None = None,
) -> tuple[Any, Study]:
    """The Tuner that runs (or continues) a study, and the study it runs (less, after a torn Tune state)."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    path = f"{state['tune_storage']}/{study.key}"
    trainable = _trainable(config)
    torn = torn_tune_state(path)
    if torn is not None:
        aside = f"{path}.torn-{int(time.time())}"
        os.replace(path, aside)
        study = remaining_work(study, read_trials(directory / "results"))
        say(
            f"study {study.key}: Tune's saved state is damaged ({torn}), moved to {aside}; running what the "
            f"store does not hold ({study.expected_trials} trials)"
        )
        if study.expected_trials == 0:
            return None, study
    elif tune.Tuner.can_restore(path):
        restored = tune.Tuner.restore(
            # an errored trial that is still ERROR ran out of retries for lost workers: resume tries it again
            path,
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            restart_errored=False,
        )
        return restored, study
    record = state["tracking"]
    tracking = opening if opening is not None and record["parent_run_id"] is None else Tracking(**record)
    callbacks = [
        TrialRecorder(
            str(directory), study.key, tracking, state["config_hash"], uri=record["uri"], on_opened=opened
        ),
        ProgressLine(
            study.key, config.metric, "max" if config.metric == "val_acc" else "min", study.expected_trials
        ),
        JsonLoggerCallback(),
    ]
    searcher = make_searcher(study, config)
    fresh = tune.Tuner(
        trainable,
        param_space={} if study.search.name == "optuna" else study.param_space(),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(study, config),
            num_samples=study.num_samples,
            # a DDP trial's process only drives its Train run, which keeps on finishing after its last report: Tune
            # cannot reset it for the next trial (the reset waits 2 s, then the next trial is stuck pending)
            reuse_actors=config.reuse_actors and not config.resources.distributed,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=study.key,
            storage_path=state["tune_storage"],
            verbose=0,
            callbacks=callbacks,
            # the trial counts its own errors against max_failures; the rest are lost workers and nodes
            failure_config=tune.FailureConfig(max_failures=config.max_failures + config.infra_retries),
            # PBT exploits other trials' checkpoints: keep more of them
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if study.scheduler.name == "pbt" else 2),
        ),
    )
    return fresh, study


def _tracking_record(tracking: Tracking) -> dict[str, Any]:
    return {
        "uri": tracking.uri,
        "experiment_id": tracking.experiment_id,
        "parent_run_id": tracking.parent_run_id,
        "source": dict(tracking.source),
    }


def _open_tracking(config: ExperimentConfig, directory: Path, uri: str, source: dict[str, str]) -> Tracking:
    """The MLflow experiment (made or found) and this widthtune experiment's parent run."""
    if uri == sqlite_uri(directory):
        seed_sqlite_store(directory / SQLITE_FILE)
    return open_parent_run(
        uri,
        config.name,
        directory / "mlartifacts",
        run_name=f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={"widthtune.kind": config.kind, "widthtune.dir": str(directory)},
        source=source,
    )


def _record_tracking(directory: Path, state: dict[str, Any], tracking: Tracking) -> None:
    """The opened parent run's ids into the saved state (from the main thread, the state's only writer)."""
    if state["tracking"]["parent_run_id"] is None:
        state["tracking"] = _tracking_record(tracking)
        _write_state(directory, state)


def create_experiment(
    config: ExperimentConfig, pool: ThreadPoolExecutor | None = None
) -> tuple[Path, Future | None]:
    """Make the experiment directory, the MLflow experiment and parent run, and the saved state; start nothing.

    With a `pool`, the default sqlite store (whose import and migrations take seconds) opens there while Tune
    starts: the state then records the parent run's ids as pending (None), and the returned future gives them.
    """
    directory = experiment_dir(config)
    if (directory / EXPERIMENT_FILE).exists():
        raise ExperimentExistsError(
            f"name: experiment {config.name!r} already exists in {directory}; "
            f"continue it with `widthtune resume {directory}` or choose another name (--set name=...)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    route_library_logs(directory)
    (directory / "config.yaml").write_text(yaml.safe_dump(config.as_dict(), sort_keys=False))
    uri = config.tracking_uri or sqlite_uri(directory)
    source = source_tags(config.digest())
    opening = None
    if pool is not None and not config.tracking_uri:
        opening = pool.submit(_open_tracking, config, directory, uri, source)
        record = {"uri": uri, "experiment_id": None, "parent_run_id": None, "source": source}
    else:
        record = _tracking_record(_open_tracking(config, directory, uri, source))
    studies = plan_studies(config)
    state = {
        "format": FORMAT,
        "version": 1,
        "name": config.name,
        "kind": config.kind,
        "created": time.time(),
        "config": config.as_dict(),
        "config_hash": config.digest(),
        "tracking": record,
        "tune_storage": tune_storage(config, directory),
        "studies": {s.key: "pending" for s in studies},
        "artifacts": {},
    }
    _write_state(directory, state)
    return directory, opening


def _run_study(
    study: Study,
    config: ExperimentConfig,
    directory: Path,
    state: dict[str, Any],
    say: Callable[[str], None],
    opening: Future | None = None,
    opened: Callable[[Tracking], None] | None = None,
) -> None:
    """One study through Tune (restored when it was interrupted); marked done in the state once every trial ended."""
    state["studies"][study.key] = "running"
    _write_state(directory, state)
    say(f"study {study.key}: {study.method}, search {study.search.name}, scheduler {study.scheduler.name}")
    tuner, study = _tuner(study, config, directory, state, say, opening, opened)
    if tuner is None:  # nothing left to run
        state["studies"][study.key] = "done"
        _write_state(directory, state)
        return
    results = tuner.fit()
    ended = results.num_terminated + results.num_errors
    stored = stored_studies(directory / "results")[study.key]
    if ended < len(results) or stored < study.expected_trials:
        raise ExperimentInterrupted(
            f"study {study.key} was interrupted with trials unfinished; continue with: widthtune resume {directory}"
        )
    state["studies"][study.key] = "done"
    _write_state(directory, state)


def _record_artifact(
    recipe: ArtifactRecipe, record: dict[str, Any], directory: Path, state: dict[str, Any]
) -> None:
    """The artifact's record in the state, the results store and MLflow (a child run, found again on resume)."""
    state.setdefault("artifacts", {})[recipe.key] = record
    _write_state(directory, state)
    runs = TrialRuns(Tracking(**state["tracking"]))
    key = f"artifact__{recipe.key}"
    run_id = runs.run_for(
        key,
        key,
        {
            "widthtune.role": ARTIFACT,
            "widthtune.artifact": recipe.key,
            "widthtune.artifact.kind": recipe.kind,
        },
        {"kind": recipe.kind, "seed": recipe.seed, **{f"recipe.{k}": v for k, v in recipe.recipe.items()}},
    )
    status = "completed" if record["status"] == "done" else "errored"
    runs.finish(key, status, {"widthtune.status": status}, [])
    write_artifact(
        directory / "results",
        {
            "artifact_key": recipe.key,
            "kind": recipe.kind,
            "seed": recipe.seed,
            "recipe_json": json.dumps(recipe.as_dict()["recipe"], sort_keys=True),
            "status": record["status"],
            "path": record.get("built", {}).get("path"),
            "value_json": json.dumps(record.get("built"), sort_keys=True, default=str),
            "reason": record.get("reason"),
            "wall_seconds": record.get("seconds"),
            "trial_key": record.get("trial_key"),
            "mlflow_run_id": run_id,
            "finished_at": time.time(),
        },
    )


def _artifact(
    recipe: ArtifactRecipe,
    key: str,
    config: ExperimentConfig,
    directory: Path,
    state: dict[str, Any],
    say: Callable[[str], None],
) -> Built:
    """The artifact, built now unless an earlier run (or an earlier study) finished it."""
    saved = state.get("artifacts", {}).get(recipe.key)
    if saved is not None and saved["status"] == "done":
        return Built.from_dict(saved["built"])
    if saved is not None:
        raise ArtifactFailed(saved["reason"])
    kind, folder, started = artifact_kind(recipe), artifact_dir(directory, recipe), time.time()
    say(f"artifact {recipe.key}: {kind.summary}")
    record: dict[str, Any] = {"recipe": recipe.as_dict()}
    try:
        if kind.study is not None:
            study = kind.study(recipe, folder, config)
            state["studies"].setdefault(study.key, "pending")
            if state["studies"][study.key] != "done":
                _run_study(study, config, directory, state, say)
            record["trial_key"] = study.key
        built = kind.collect(recipe, key, folder, config, directory)
    except ArtifactFailed as error:
        record.update(status="failed", reason=str(error), seconds=time.time() - started)
        _record_artifact(recipe, record, directory, state)
        raise
    for note in built.notes:
        say(note)
    record.update(status="done", built=built.as_dict(), seconds=time.time() - started)
    _record_artifact(recipe, record, directory, state)
    return built


def _fail_study(study: Study, reason: str, directory: Path, state: dict[str, Any]) -> None:
    """A study whose artifact failed: one errored row that says why; nothing else is touched."""
    write_trial(
        directory / "results",
        {
            "trial_key": f"{study.key}__unstarted",
            "study": study.key,
            "method": study.method,
            "label": study.label,
            "role": study.constants.get("role"),
            "model": study.model,
            "seed": study.seed,
            "status": "errored",
            "error": reason,
            "finished_at": time.time(),
        },
        [],
    )
    state["studies"][study.key] = "failed"
    _write_state(directory, state)


def _prepared(
    study: Study, config: ExperimentConfig, directory: Path, state: dict[str, Any], say: Callable[[str], None]
) -> Study | None:
    """The study with its artifacts handed to it; None when one failed (its trials fail with the reason)."""
    for key, recipe in study.needs.items():
        try:
            study = _artifact(recipe, key, config, directory, state, say).bind(key, study)
        except ArtifactFailed as error:
            say(f"study {study.key}: not run, {error}")
            _fail_study(study, str(error), directory, state)
            return None
    return dataclasses.replace(study, needs={})


def execute(
    directory: Path,
    say: Callable[[str], None] = print,
    opening: Future | None = None,
    config: ExperimentConfig | None = None,
) -> dict[str, Any]:
    """Run (or continue) every study that is not done; returns the final state.

    `opening`: the parent run still opening on another thread (a new experiment's); without it, a state whose
    parent run never finished opening (its driver was stopped in those seconds) gets one now. `config`: the
    experiment's config when the caller has just validated it (a new experiment's); else the state's is.
    """
    directory = Path(directory).expanduser().resolve()
    state = read_state(directory)
    if config is None:  # a resume: the stored config, checked again against today's models and methods
        config = validate_config(state["config"])
    try:
        check_writable(directory, "resume writes its trials, checkpoints and report there")
    except NotWritableError as error:
        raise ConfigError(str(error)) from None
    route_library_logs(directory)
    stopped = clean_leftovers(directory)
    if stopped:
        say(f"stopped {len(stopped)} processes a killed earlier run of this experiment left running")
    start_ray(config)
    remember_ray_session(directory)
    record = state["tracking"]
    guard = TrackingGuard(record["uri"], directory)
    guard.reset()
    if record["parent_run_id"] is None and opening is None:
        _record_tracking(directory, state, _open_tracking(config, directory, record["uri"], record["source"]))
    elif opening is None:
        tracking = Tracking(**record)
        guard.call(tracking.client().update_run, tracking.parent_run_id, status="RUNNING")

    def opened(tracking: Tracking) -> None:
        _record_tracking(directory, state, tracking)

    try:
        for planned in plan_studies(config):
            if state["studies"].get(planned.key, "pending") in ("done", "failed"):
                continue
            if planned.needs and opening is not None:  # an artifact's own records need the parent run
                opened(opening.result())
            study = _prepared(planned, config, directory, state, say)
            if study is None:
                continue
            if any(d.kind == "grid" and not d.values for d in study.domains.values()):
                state["studies"][study.key] = "done"  # nothing to run (e.g. no transfer points)
                _write_state(directory, state)
                continue
            _run_study(study, config, directory, state, say, opening, opened)
    finally:
        if opening is not None:
            opened(opening.result())
    rows = read_trials(directory / "results")  # once, for the report and the parent run's summary
    write_report(directory, rows=rows)
    guard.call(close_parent_run, Tracking(**state["tracking"]), directory / "report", rows)
    return state


def run_experiment(config: ExperimentConfig, say: Callable[[str], None] = print) -> Path:
    """Create the experiment, then run it (Ray is checked first: a request it cannot meet leaves nothing behind)."""
    if config.tracking_uri:
        try:
            check_tracking_uri(config.tracking_uri)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    start_ray(config)
    # one thread: the default MLflow store migrates there while Tune starts the first trials
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="widthtune-mlflow") as pool:
        directory, opening = create_experiment(config, pool)
        say(f"experiment {config.name}: {directory}")
        execute(directory, say, opening, config)
    return directory
