"""The runner: assembles `tune.Tuner` per study from the config, runs them in order, and resumes them.

The experiment directory holds everything local: `experiment.json` (config, hash, MLflow ids, study status),
`config.yaml`, `mlflow.db` (default store), `results/` (the Parquet store), `tune/` (Tune's checkpoints,
unless `storage` is a URI), and the report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from widthtune.analysis.report import write_report
from widthtune.platform.config import ConfigError, ExperimentConfig, validate_config
from widthtune.platform.interruption import ExperimentInterrupted
from widthtune.platform.progress import ProgressLine
from widthtune.platform.recorder import TrialRecorder
from widthtune.platform.store import read_trials
from widthtune.platform.studies import Study, make_scheduler, make_searcher, plan_studies
from widthtune.platform.tracking import Tracking, open_parent_run, sqlite_uri
from widthtune.platform.transfer import target_studies, transfer_points
from widthtune.trainables.adapter import run_trial
from widthtune.trainables.teacher import teacher_from_trials

STATE_FILE = "experiment.json"
FORMAT = "widthtune.experiment"


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
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault(
        "TUNE_GLOBAL_CHECKPOINT_S", "2"
    )  # experiment state saved often: a killed driver loses little
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress line replaces Tune's tables
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def start_ray(config: ExperimentConfig) -> None:
    """Connect to RAY_ADDRESS when set (`auto`: the cluster on this machine), else start a fresh local Ray.

    Then check that some node can hold one trial's resources.
    """
    import ray

    _environment()
    if not ray.is_initialized():
        # no RAY_ADDRESS: a fresh local Ray, never a cluster some other process happens to run here
        address = os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    for name, key, wanted in (("cpu", "CPU", config.resources.cpu), ("gpu", "GPU", config.resources.gpu)):
        largest = max((node.get(key, 0) for node in nodes), default=0)
        if wanted > largest:
            raise ConfigError(
                f"resources.{name}: {wanted} per trial, but the largest node of the Ray cluster has {largest} {key}s"
            )


def read_state(directory: Path) -> dict[str, Any]:
    """The experiment's saved state."""
    path = Path(directory).expanduser().resolve() / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{str(directory)!r} is not a widthtune experiment directory (no {STATE_FILE})")
    state = json.loads(path.read_text())
    if state.get("format") != FORMAT:
        raise ConfigError(f"{str(path)!r} is not a widthtune experiment state file")
    return state


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    partial = directory / (STATE_FILE + ".partial")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(partial, directory / STATE_FILE)


def trial_dirname(trial: Any) -> str:
    """Trial folders named by trial id (Tune's default packs the whole flat config into the name)."""
    return f"trial_{trial.trial_id}"


def _trainable(config: ExperimentConfig) -> Any:
    from ray import tune

    return tune.with_resources(run_trial, {"cpu": config.resources.cpu, "gpu": config.resources.gpu})


def _tuner(study: Study, config: ExperimentConfig, directory: Path, state: dict[str, Any]) -> Any:
    from ray import tune

    path = f"{state['tune_storage']}/{study.key}"
    trainable = _trainable(config)
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(
            path, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        )
    tracking = Tracking(**state["tracking"])
    callbacks = [
        TrialRecorder(str(directory), study.key, tracking, state["config_hash"]),
        ProgressLine(
            study.key, config.metric, "max" if config.metric == "val_acc" else "min", study.num_samples
        ),
    ]
    searcher = make_searcher(study, config)
    return tune.Tuner(
        trainable,
        param_space={} if study.search.name == "optuna" else study.param_space(),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(study, config),
            num_samples=study.num_samples,
            reuse_actors=False,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=study.key,
            storage_path=state["tune_storage"],
            verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            # PBT exploits other trials' checkpoints: keep more of them
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if study.scheduler.name == "pbt" else 2),
        ),
    )


def create_experiment(config: ExperimentConfig) -> Path:
    """Make the experiment directory, the MLflow experiment and parent run, and the saved state; start nothing."""
    directory = experiment_dir(config)
    if (directory / STATE_FILE).exists():
        raise ExperimentExistsError(
            f"name: experiment {config.name!r} already exists in {directory}; "
            f"continue it with `widthtune resume {directory}` or choose another name (--set name=...)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(config.as_dict(), sort_keys=False))
    uri = config.tracking_uri or sqlite_uri(directory)
    tracking = open_parent_run(
        uri,
        config.name,
        directory / "mlartifacts",
        run_name=f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            "widthtune.kind": config.kind,
            "widthtune.config_hash": config.digest(),
            "widthtune.dir": str(directory),
        },
    )
    studies = plan_studies(config)
    state = {
        "format": FORMAT,
        "version": 1,
        "name": config.name,
        "kind": config.kind,
        "created": time.time(),
        "config": config.as_dict(),
        "config_hash": config.digest(),
        "tracking": {
            "uri": tracking.uri,
            "experiment_id": tracking.experiment_id,
            "parent_run_id": tracking.parent_run_id,
        },
        "tune_storage": tune_storage(config, directory),
        "studies": {s.key: "pending" for s in studies},
    }
    _write_state(directory, state)
    return directory


def _run_study(
    study: Study, config: ExperimentConfig, directory: Path, state: dict[str, Any], say: Callable[[str], None]
) -> None:
    """One study through Tune (restored when it was interrupted); marked done in the state once every trial ended."""
    state["studies"][study.key] = "running"
    _write_state(directory, state)
    say(f"study {study.key}: {study.method}, search {study.search.name}, scheduler {study.scheduler.name}")
    results = _tuner(study, config, directory, state).fit()
    if results.num_terminated + results.num_errors < len(results):
        raise ExperimentInterrupted(
            f"study {study.key} was interrupted with trials unfinished; continue with: widthtune resume {directory}"
        )
    state["studies"][study.key] = "done"
    _write_state(directory, state)


def _with_teacher(study: Study, config: ExperimentConfig, directory: Path) -> Study:
    """A study distilling from an earlier method of this experiment, pointed at that method's best trial."""
    teacher = study.constants.get("distill.teacher")
    if teacher not in config.labels():
        return study
    try:
        keys = teacher_from_trials(teacher, read_trials(directory / "results"))
    except ValueError as error:
        raise ConfigError(f"methods[{study.label}].{error}") from None
    return dataclasses.replace(study, constants={**study.constants, **keys})


def _transfer_phase(
    config: ExperimentConfig, directory: Path, state: dict[str, Any], say: Callable[[str], None]
) -> list[Study]:
    """The target studies of a transfer experiment, from its proxies' results (computed once, then read back)."""
    if "transfer" not in state:
        points, skipped = transfer_points(config, read_trials(directory / "results"))
        state["transfer"] = {"points": points, "skipped": skipped}
        for line in skipped:
            say(f"transfer: skipped {line}")
    studies = target_studies(config, state["transfer"]["points"])
    for study in studies:
        state["studies"].setdefault(study.key, "pending")
    _write_state(directory, state)
    return studies


def execute(directory: Path, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue) every study that is not done; returns the final state."""
    directory = Path(directory).expanduser().resolve()
    state = read_state(directory)
    config = validate_config(state["config"])
    start_ray(config)
    tracking = Tracking(**state["tracking"])
    tracking.client().update_run(tracking.parent_run_id, status="RUNNING")
    for study in plan_studies(config):
        if state["studies"].get(study.key) != "done":
            _run_study(_with_teacher(study, config, directory), config, directory, state, say)
    if config.kind == "transfer":
        for study in _transfer_phase(config, directory, state, say):
            if state["studies"].get(study.key) != "done":
                _run_study(study, config, directory, state, say)
    md, page = write_report(directory)
    client = tracking.client()
    client.log_artifact(tracking.parent_run_id, str(md))
    client.log_artifact(tracking.parent_run_id, str(page))
    client.set_terminated(tracking.parent_run_id, status="FINISHED")
    return state


def run_experiment(config: ExperimentConfig, say: Callable[[str], None] = print) -> Path:
    """Create the experiment, then run it (Ray is checked first: a request it cannot meet leaves nothing behind)."""
    start_ray(config)
    directory = create_experiment(config)
    say(f"experiment {config.name}: {directory}")
    execute(directory, say)
    return directory
