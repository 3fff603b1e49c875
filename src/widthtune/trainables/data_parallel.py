"""The Tune trainable of a data-parallel trial (`resources.workers` > 1): Ray Train's `TorchTrainer` run inside
the Tune trial, its workers' reports forwarded to the trial by `TuneReportCallback`.

The method's search runs once, on rank 0, and its widths (and weights, if it keeps any) are broadcast to every
worker; each worker trains DDP on its share of every batch; rank 0 reports every epoch with a checkpoint.

Retries are Tune's alone, on a single-process trial's budgets: Ray Train never restarts the worker group itself
(its `max_failures` is 0), so a failure reaches the trial once. An error the trial's code raised on any worker
counts against `max_failures` (a deterministic error runs 1 + `max_failures` times, never that times Train's
budget); a lost Train worker, its node or Train's controller is infrastructure, and only Tune's `infra_retries`
cover it. A retried trial finds its Train run by name in the trial folder and continues from that run's last
checkpoint.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from widthtune.models.artifact import WIDTHS_FILE, make_artifact
from widthtune.models.registry import materialize
from widthtune.models.widths import Widths
from widthtune.trainables.adapter import (
    ERRORED_LOSS,
    FoundWidths,
    count_failure,
    distillation,
    epoch_metrics,
    find_widths,
    load_trial_state,
    reported_widths,
    save_model,
    save_trial_state,
    starting_weights,
    trial_task,
    worker_cost_model,
)
from widthtune.trainables.placement_cleanup import start_cleanup
from widthtune.trainables.trial import TRAIN_RUN, TrialSpec, expand_bundle
from widthtune.training.data_parallel import Shard
from widthtune.training.loop import NonFiniteLossError, TrainState, train


def _error_metrics(message: str) -> dict[str, Any]:
    return {"error": message, "val_acc": 0.0, "val_loss": ERRORED_LOSS, "epoch": 0}


def _report(metrics: dict[str, Any], shard: Shard, state: TrainState | None, found: FoundWidths) -> None:
    """Every worker reports (Train waits for all); rank 0's carries the checkpoint, and is what Tune sees."""
    import ray.train

    if shard.rank != 0 or state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        save_trial_state(Path(directory), state, found)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _search_once(shard: Shard, trial: TrialSpec, task: Any) -> tuple[FoundWidths | None, str | None]:
    """The method's search on rank 0, its outcome broadcast to every worker."""
    import torch.distributed as dist

    found, error = None, None
    if shard.rank == 0:
        try:
            found = find_widths(task, trial.method)
        except ValueError as failure:  # a property of the configuration: end the trial, no retry
            error = f"{type(failure).__name__}: {failure}"
    payload: list[Any] = [
        None if found is None else {**vars(replace(found, widths=None)), "widths": found.widths.as_dict()},
        error,
    ]
    if shard.parallel:
        dist.broadcast_object_list(payload, src=0)
    if payload[1] is not None:
        return None, payload[1]
    values = dict(payload[0])
    values["widths"] = Widths.from_mapping(task.space, values["widths"])
    return FoundWidths(**values), None


def train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker of the trial: restore or search (rank 0, broadcast), then train DDP and report."""
    import ray.train
    from ray.util.placement_group import get_current_placement_group

    config = loop_config["trial"]
    context = ray.train.get_context()
    shard = Shard(context.get_world_rank(), context.get_world_size())
    if shard.rank == 0:
        loop_config["cleanup"].guard.remote(get_current_placement_group())
    trial = TrialSpec.parse(config)
    torch.set_num_threads(max(1, int(float(trial.flat.get("resources.cpu_per_worker", 1)))))
    task, cost_model, target = trial_task(trial)
    resume: TrainState | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume, found = load_trial_state(Path(directory), task)
    else:
        searched, error = _search_once(shard, trial, task)
        if error is not None:
            ray.train.report(_error_metrics(error))
            return
        found = searched
    recipe = trial.retrain.recipe(
        trial.train,
        float(cost_model.base().flops),
        float(cost_model.evaluate(found.widths).flops),
        trial.data.name,
    )
    model = materialize(trial.model, found.widths, seed=recipe.seed)
    if resume is None:
        weights = starting_weights(trial.retrain, found, trial.method)
        if weights is not None:
            model.load_state_dict(weights)
    latest: list[TrainState] = []

    def report(record: Any) -> None:
        _report(epoch_metrics(record, found, cost_model, target, recipe.epochs), shard, latest[-1], found)

    try:
        history = train(
            model,
            task.data,
            recipe,
            resume=resume,
            on_checkpoint=latest.append,
            on_epoch=report,
            shard=shard,
            **distillation(trial.teacher),
        )
    except NonFiniteLossError as error:
        last = latest[-1].records[-1] if latest else None
        metrics = epoch_metrics(last, found, cost_model, target, recipe.epochs) if last else {}
        metrics.update(error=f"NonFiniteLossError: {error}", val_acc=0.0, val_loss=ERRORED_LOSS)
        metrics.setdefault("epoch", 0)
        ray.train.report(metrics)
        return
    if shard.rank == 0 and trial.artifact_dir:
        artifact = make_artifact(trial.model, found.widths, method=trial.method, cost_model=cost_model)
        save_model(Path(trial.artifact_dir), model, artifact)
    if resume is not None and len(history.records) == len(resume.records):
        # restored after the last epoch was checkpointed: report it once more so the trial has a final result
        ray.train.report(epoch_metrics(history.final, found, cost_model, target, recipe.epochs))


def _run_data_parallel(config: dict[str, Any]) -> None:
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    # DeveloperAPI: the Tune trial's storage (a URI included), where its Train run must live too
    from ray.train._internal.session import get_storage
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    storage = get_storage()
    flat = expand_bundle(config)
    trial_dir = Path(tune.get_context().get_trial_dir())
    workers = int(flat["resources.workers"])
    cpu, gpu = float(flat["resources.cpu_per_worker"]), float(flat["resources.gpu_per_worker"])
    per_worker = {"CPU": cpu, "GPU": gpu} if gpu else {"CPU": cpu}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"trial": config, "cleanup": start_cleanup()},
        # NCCL needs a whole device per rank; workers sharing a GPU talk over gloo
        torch_config=TorchConfig(backend="nccl" if gpu >= 1 else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu > 0, resources_per_worker=per_worker),
        run_config=RunConfig(
            # the Train run lives in the trial's folder in Tune's storage (shared, or a URI), not on this node
            name=TRAIN_RUN,
            storage_path=storage.trial_fs_path,
            storage_filesystem=storage.storage_filesystem,
            failure_config=FailureConfig(
                max_failures=0
            ),  # every retry is the Tune trial's (module docstring)
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    result = trainer.fit()
    metrics = result.metrics or {}
    found = reported_widths(metrics)
    if found is not None and not (trial_dir / WIDTHS_FILE).is_file():
        trial = TrialSpec.parse(config)
        widths = Widths.from_mapping(worker_cost_model(trial.model).space, found)
        make_artifact(trial.model, widths, method=trial.method, provenance={"trial": dict(trial.flat)}).save(
            trial_dir / WIDTHS_FILE
        )


def lost_infrastructure(error: BaseException) -> bool:
    """Whether a failed Train run lost a worker, a node or its controller (Tune's `infra_retries`), rather than
    the trial's code raising (`max_failures`). One lost worker is enough: the survivors' collectives then fail
    too, and those collateral errors are not the code's."""
    from ray.exceptions import RayError
    from ray.train import ControllerError, WorkerGroupError

    if isinstance(error, ControllerError | RayError):
        return True
    if not isinstance(error, WorkerGroupError):
        return False
    # a lost worker is a RayActorError, or Train's health check failing (its own RayTrainError); a worker's
    # raised error comes as raised
    from ray.train.v2._internal.exceptions import RayTrainError

    return any(isinstance(failure, RayError | RayTrainError) for failure in error.worker_failures.values())


def raised_by_the_code(error: BaseException) -> BaseException:
    """The error a worker's code raised (the lowest rank's), not Train's summary of every rank's."""
    from ray.train import WorkerGroupError

    if isinstance(error, WorkerGroupError) and error.worker_failures:
        return error.worker_failures[min(error.worker_failures)]
    return error


def run_data_parallel_trial(config: dict[str, Any]) -> None:
    """Tune function trainable of a DDP trial: its code's errors count against `max_failures` like a
    single-process trial's; a lost worker is left to Tune's infrastructure retries."""
    from ray import tune

    try:
        _run_data_parallel(config)
    except Exception as error:
        if lost_infrastructure(error):
            raise
        failures = count_failure(Path(tune.get_context().get_trial_dir()), error)
        if failures <= int(expand_bundle(config).get("max_failures", 0)):
            raise
        cause = raised_by_the_code(error)
        tune.report(_error_metrics(f"{type(cause).__name__}: {cause}"))
