"""The one Tune adapter: any method's `search(task)` becomes a function trainable that trains its widths from scratch.

A trial: read the flat config, search (or restore the search from the checkpoint), match the cost target,
materialise a fresh model, train it, and `tune.report` every epoch with a checkpoint so a retried, paused or
PBT-exploited trial resumes where it stopped instead of searching again.
"""

from __future__ import annotations

import functools
import json
import pickle
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from widthtune.models.artifact import WIDTHS_FILE, WidthsArtifact, make_artifact
from widthtune.models.cost import CostModel
from widthtune.models.initialization import fill_bn_gamma
from widthtune.models.match import COST_TOLERANCE, match_cost
from widthtune.models.registry import materialize
from widthtune.models.spec import ModelSpec
from widthtune.models.widths import Widths
from widthtune.search_spaces.cost_target import CostTarget, resolve_cost_target
from widthtune.trainables.artifacts import MODEL_FILE
from widthtune.trainables.registry import get_method
from widthtune.trainables.retraining import Retraining
from widthtune.trainables.task import TRAIN_FLOPS_PER_MAC_PER_IMAGE, Task
from widthtune.trainables.teacher import load_teacher
from widthtune.trainables.trial import CHECKPOINT_FILE, Teacher, TrialSpec, expand_bundle
from widthtune.training.datasets import DatasetSplits, DataSpec, load_dataset
from widthtune.training.loop import EpochRecord, NonFiniteLossError, TrainState, train

# what an errored trial reports as its loss, so schedulers and searchers rank it last
ERRORED_LOSS = 1e30
# in a trial folder: the tracebacks of the trial's own errors, and how many there were
ERROR_LOG = "error.log"
FAILURES_FILE = "failures.txt"


@dataclass(frozen=True)
class FoundWidths:
    """The search's outcome after cost matching: what is trained, and what finding it cost."""

    widths: Widths
    search_flops: float
    search_seconds: float
    multiplier: float = 1.0
    info: Mapping[str, Any] = field(default_factory=dict)
    # the search's weights for `widths` (kept ones to fine-tune, or generated ones to start from); never saved
    weights: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    init_from_weights: bool = False
    bn_gamma_init: float | None = None


def find_widths(task: Task, method_name: str) -> FoundWidths:
    """Run the method's search, then scale its answer to the cost target unless it already meets it."""
    started = time.perf_counter()
    result = get_method(method_name).search(task)
    widths, multiplier, weights = result.widths, 1.0, result.weights
    if result.match_target and task.cost_target is not None:
        current = task.cost_model.cost(widths, task.convention)
        if abs(current - task.cost_target) > task.tolerance * task.cost_target:
            matched = match_cost(
                widths,
                task.cost_target,
                task.cost_model,
                convention=task.convention,
                tolerance=task.tolerance,
            )
            widths, multiplier, weights = (
                matched.widths,
                matched.multiplier,
                None,
            )  # rescaled: weights no longer fit
    return FoundWidths(
        widths,
        result.search_flops,
        time.perf_counter() - started,
        multiplier,
        dict(result.info),
        weights,
        result.init_from_weights and weights is not None,
        result.bn_gamma_init,
    )


def starting_weights(retrain: Retraining, found: FoundWidths, method: str) -> Mapping[str, Any] | None:
    """The weights training starts from: the kept ones to fine-tune, generated ones when the method asks."""
    if retrain.mode == "finetune":
        if found.weights is None:
            raise ValueError(
                f"retrain.mode: finetune needs inherited weights, and {method} kept none "
                "(use a pruning method such as slimming or l1_filter, without cost matching)"
            )
        return found.weights
    return found.weights if found.init_from_weights else None


def initial_model(
    spec: ModelSpec, found: FoundWidths, retrain: Retraining, method: str, seed: int, fresh: bool = True
) -> torch.nn.Module:
    """The model a trial trains: its starting weights (kept or generated) or, from scratch, the method's BN init.

    `fresh=False` (a trial restored from its checkpoint) leaves it as materialised: the checkpoint's state wins.
    """
    model = materialize(spec, found.widths, seed=seed)
    if fresh:
        weights = starting_weights(retrain, found, method)
        if weights is not None:
            model.load_state_dict(weights)
        elif found.bn_gamma_init is not None:
            fill_bn_gamma(model, found.bn_gamma_init)
    return model


def epoch_metrics(
    record: EpochRecord, found: FoundWidths, cost_model: CostModel, target: CostTarget | None, epochs: int
) -> dict[str, Any]:
    """What every `tune.report` carries: the epoch, the model's cost, the search and training cost so far."""
    cost = cost_model.evaluate(found.widths)
    metrics = {k: v for k, v in asdict(record).items() if v is not None}
    metrics.update(
        macs=cost.macs,
        flops=cost.flops,
        params=cost.params,
        cost_target=target.value if target else None,
        cost_convention=target.convention if target else None,
        cost_target_label=target.label if target else None,
        multiplier=found.multiplier,
        search_flops=found.search_flops,
        search_seconds=found.search_seconds,
        train_flops=float(TRAIN_FLOPS_PER_MAC_PER_IMAGE * cost.macs * record.images_seen),
        epochs=epochs,
        widths=json.dumps(found.widths.as_dict()),
    )
    return {k: v for k, v in metrics.items() if v is not None}


def reported_widths(result: Mapping[str, Any]) -> dict[str, int] | None:
    """The trained widths a trial's result carries (group: channels), or None before it has any.

    They travel as one JSON text, not as a nested dict: Tune would flatten that into one metric per group, keep
    running statistics of each and save them with every trial's state (driver CPU a deep model pays per result).
    """
    text = result.get("widths")
    return {str(k): int(v) for k, v in json.loads(text).items()} if text else None


def save_trial_state(directory: Path, state: TrainState, found: FoundWidths) -> None:
    """A trial's checkpoint (training state and found widths, plain tensors), so a restart never searches again."""
    torch.save(
        {
            "train": asdict(state),
            "found": {**asdict(replace(found, weights=None)), "widths": found.widths.as_dict()},
        },
        directory / CHECKPOINT_FILE,
    )


def load_trial_state(directory: Path, task: Task) -> tuple[TrainState, FoundWidths]:
    """The training state and found widths a checkpoint folder holds (what `save_trial_state` wrote)."""
    saved = torch.load(directory / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    train_state = saved["train"]
    train_state["records"] = tuple(EpochRecord(**r) for r in train_state["records"])
    found = dict(saved["found"])
    found["widths"] = Widths.from_mapping(task.space, found["widths"])
    return TrainState(**train_state), FoundWidths(**found)


def restore(trial_dir: Path, task: Task) -> tuple[TrainState, FoundWidths] | None:
    """The newest readable checkpoint: Tune's, else an older one in the trial folder (a checkpoint cut short by a
    kill mid-write is skipped); None when the trial starts from scratch."""
    from ray import tune

    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                return load_trial_state(Path(directory), task)
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError):
        pass  # torn or missing: fall back to what the trial folder still holds
    candidates = sorted(
        (p.parent for p in trial_dir.glob(f"checkpoint_*/{CHECKPOINT_FILE}")),
        key=lambda p: p.name,
        reverse=True,
    )
    for folder in candidates:
        try:
            return load_trial_state(folder, task)
        except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError):
            continue
    return None


def distillation(teacher: Teacher | None) -> dict[str, Any]:
    """`teacher` and `distill` for the training loop when the trial distils from a trained teacher."""
    if teacher is None:
        return {}
    return {"teacher": load_teacher(teacher.path, teacher.model, teacher.widths), "distill": teacher.loss}


def save_model(directory: Path, model: torch.nn.Module, artifact: WidthsArtifact) -> None:
    """A trained model as an artifact others start from: plain tensors (`model.pt`) and its `widths.json`."""
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / (MODEL_FILE + ".partial")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, partial)
    artifact.save(directory / WIDTHS_FILE)
    partial.replace(directory / MODEL_FILE)


@functools.lru_cache(maxsize=4)
def _dataset(spec: DataSpec) -> DatasetSplits:
    return load_dataset(spec)


@functools.lru_cache(maxsize=8)
def _cost_model(spec: ModelSpec) -> CostModel:
    return CostModel.from_spec(spec)


def worker_dataset(spec: DataSpec) -> DatasetSplits:
    """The dataset, loaded once per worker process: a reused Ray worker serves many trials of one study."""
    try:
        return _dataset(spec)
    except TypeError:  # an unhashable setting: load it fresh
        return load_dataset(spec)


def worker_cost_model(spec: ModelSpec) -> CostModel:
    """The cost model, traced once per worker process (it depends on the spec alone)."""
    try:
        return _cost_model(spec)
    except TypeError:
        return CostModel.from_spec(spec)


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: search, match, materialise, train from scratch, report and checkpoint every epoch.

    An error the trial raises counts against its `max_failures` (kept in the trial folder, so it survives the
    restarts): within them Tune retries it from its last checkpoint; past them it ends errored, once, with its
    reason reported and the traceback in `error.log`. A lost worker or node never reaches this code, so Tune's
    separate budget of retries for those (`infra_retries`) is the user's errors' budget plus that.
    """
    from ray import tune

    try:
        _run_trial(config)
    except Exception as error:
        trial_dir = Path(tune.get_context().get_trial_dir())
        failures = count_failure(trial_dir, error)
        if failures <= int(expand_bundle(config).get("max_failures", 0)):
            raise
        tune.report(
            {
                "error": f"{type(error).__name__}: {error}",
                "val_acc": 0.0,
                "val_loss": ERRORED_LOSS,
                "epoch": 0,
            }
        )


def count_failure(trial_dir: Path, error: Exception) -> int:
    """One more error of this trial's own code; returns how many there have been."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    with open(trial_dir / ERROR_LOG, "a") as log:
        log.write("".join(traceback.format_exception(error)) + "\n")
    counter = trial_dir / FAILURES_FILE
    count = int(counter.read_text()) + 1 if counter.is_file() else 1
    counter.write_text(str(count))
    return count


def trial_task(trial: TrialSpec) -> tuple[Task, CostModel, CostTarget | None]:
    """What the method is asked (data and cost model cached per worker process), its cost model and target."""
    cost_model = worker_cost_model(trial.model)
    target = resolve_cost_target(trial.cost_target, cost_model)
    task = Task(
        model=trial.model,
        data=worker_dataset(trial.data),
        train=trial.train,
        cost_model=cost_model,
        cost_target=target.value if target else None,
        convention=target.convention if target else "macs",
        tolerance=target.tolerance if target else COST_TOLERANCE,
        params=trial.params,
        trial_params=trial.flat,
        seed=trial.seed,
        artifacts=trial.artifacts,
    )
    return task, cost_model, target


def _run_trial(config: dict[str, Any]) -> None:
    from ray import tune

    trial = TrialSpec.parse(config)
    if trial.threads:
        torch.set_num_threads(trial.threads)
    task, cost_model, target = trial_task(trial)
    resume: TrainState | None = None
    restored = restore(Path(tune.get_context().get_trial_dir()), task)
    if restored is not None:
        resume, found = restored
    else:
        try:
            found = find_widths(task, trial.method)
        except ValueError as error:
            # a property of the configuration (a target out of reach, a bad setting): end the trial, no retry
            tune.report(
                {
                    "error": f"{type(error).__name__}: {error}",
                    "val_acc": 0.0,
                    "val_loss": ERRORED_LOSS,
                    "epoch": 0,
                }
            )
            return
    artifact = make_artifact(
        trial.model,
        found.widths,
        method=trial.method,
        provenance={"trial": dict(trial.flat), "search": dict(found.info), "multiplier": found.multiplier},
        cost_model=cost_model,
    )
    if resume is None:
        artifact.save(Path(tune.get_context().get_trial_dir()) / WIDTHS_FILE)

    recipe = trial.retrain.recipe(
        trial.train,
        float(cost_model.base().flops),
        float(cost_model.evaluate(found.widths).flops),
        trial.data.scale,
    )
    model = initial_model(trial.model, found, trial.retrain, trial.method, recipe.seed, fresh=resume is None)
    latest: list[TrainState] = []

    def report(record: EpochRecord) -> None:
        metrics = epoch_metrics(record, found, cost_model, target, recipe.epochs)
        with tempfile.TemporaryDirectory() as directory:
            save_trial_state(Path(directory), latest[-1], found)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    try:
        history = train(
            model,
            trial.retrain.training_data(task.data),  # the search had the training split; the test set never
            recipe,
            resume=resume,
            on_checkpoint=latest.append,
            on_epoch=report,
            **distillation(trial.teacher),
        )
    except NonFiniteLossError as error:
        # a property of the configuration, not a transient fault: end the trial (no retry) and say why
        last = latest[-1].records[-1] if latest else None
        metrics = epoch_metrics(last, found, cost_model, target, recipe.epochs) if last else {}
        metrics.update(error=f"NonFiniteLossError: {error}", val_acc=0.0, val_loss=ERRORED_LOSS)
        metrics.setdefault("epoch", 0)
        tune.report(metrics)
        return
    if trial.artifact_dir:
        save_model(Path(trial.artifact_dir), model, artifact)
    if resume is not None and len(history.records) == len(resume.records):
        # restored after the last epoch was checkpointed: report it once more so the trial has a final result
        tune.report(epoch_metrics(history.final, found, cost_model, target, recipe.epochs))
