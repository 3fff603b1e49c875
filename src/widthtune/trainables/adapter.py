"""The one Tune adapter: any method's `search(task)` becomes a function trainable that trains its widths from scratch.

A trial: read the flat config, search (or restore the search from the checkpoint), match the cost target,
materialise a fresh model, train it, and `tune.report` every epoch with a checkpoint so a retried, paused or
PBT-exploited trial resumes where it stopped instead of searching again.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from widthtune.models.artifact import make_artifact
from widthtune.models.cost import CostModel
from widthtune.models.match import match_cost
from widthtune.models.registry import canonical_spec, materialize
from widthtune.models.widths import Widths
from widthtune.search_spaces.cost_target import CostTarget, resolve_cost_target
from widthtune.search_spaces.domains import unflatten
from widthtune.trainables.methods import get_method
from widthtune.trainables.retraining import retrain_recipe
from widthtune.trainables.task import TRAIN_FLOPS_PER_MAC_PER_IMAGE, Task
from widthtune.trainables.teacher import load_teacher
from widthtune.training.datasets import DataSpec, load_dataset
from widthtune.training.distill import DistillConfig
from widthtune.training.loop import EpochRecord, NonFiniteLossError, TrainConfig, TrainState, train

STATE_FILE = "trial_state.pt"
WIDTHS_FILE = "widths.json"
# what an errored trial reports as its loss, so schedulers and searchers rank it last
ERRORED_LOSS = 1e30
# a trial's bundle of keys that must vary together (a transfer study's seed, widths and provenance)
POINT_KEY = "transfer.point"


def expand_point(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat trial config with its point's keys merged in (a grid can only vary one key per value)."""
    point = config.get(POINT_KEY)
    flat = {k: v for k, v in config.items() if k != POINT_KEY}
    return {**flat, **point} if isinstance(point, Mapping) else flat


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


def train_config(config: Mapping[str, Any]) -> TrainConfig:
    """The trial's training recipe; the trial's seed is the training seed."""
    values = unflatten(config, "train")
    if "milestones" in values:
        values["milestones"] = tuple(values["milestones"])
    return TrainConfig(**{**values, "seed": int(config.get("seed", 0))})


def data_spec(config: Mapping[str, Any]) -> DataSpec:
    """The trial's data (its validation split is drawn with data.seed, fixed across training seeds)."""
    return DataSpec(**unflatten(config, "data"))


def find_widths(task: Task, method_name: str) -> FoundWidths:
    """Run the method's search, then scale its answer to the cost target unless it already meets it."""
    started = time.perf_counter()
    result = get_method(method_name).search(task)
    widths, multiplier, weights = result.widths, 1.0, result.weights
    if result.match_target and task.cost_target is not None:
        current = task.cost_model.cost(widths, task.convention)
        if abs(current - task.cost_target) > 0.005 * task.cost_target:
            matched = match_cost(widths, task.cost_target, task.cost_model, convention=task.convention)
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
    )


def retrain_mode(config: Mapping[str, Any]) -> str:
    """How the found widths are retrained: scratch-e (default), scratch-b or finetune."""
    return str(config.get("retrain.mode", "scratch-e"))


def retraining(
    config: Mapping[str, Any], recipe: TrainConfig, found: FoundWidths, cost_model: CostModel
) -> TrainConfig:
    """The recipe the found widths are trained with under the trial's retraining mode (Rethinking's budgets)."""
    mode = retrain_mode(config)
    if mode == "scratch-e":
        return recipe
    large = config.get("retrain.large_scale")
    return retrain_recipe(
        mode,
        recipe,
        float(cost_model.base().flops),
        float(cost_model.evaluate(found.widths).flops),
        large_scale=bool(large) if large is not None else config.get("data.name") == "imagefolder",
        finetune_epochs=config.get("retrain.finetune_epochs"),
    )


def starting_weights(config: Mapping[str, Any], found: FoundWidths, method: str) -> Mapping[str, Any] | None:
    """The weights training starts from: the kept ones to fine-tune, generated ones when the method asks."""
    if retrain_mode(config) == "finetune":
        if found.weights is None:
            raise ValueError(
                f"retrain.mode: finetune needs inherited weights, and {method} kept none "
                "(use a pruning method such as slimming or l1_filter, without cost matching)"
            )
        return found.weights
    return found.weights if found.init_from_weights else None


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
        widths=found.widths.as_dict(),
    )
    return {k: v for k, v in metrics.items() if v is not None}


def _save_state(directory: Path, state: TrainState, found: FoundWidths) -> None:
    torch.save(
        {
            "train": asdict(state),
            "found": {**asdict(replace(found, weights=None)), "widths": found.widths.as_dict()},
        },
        directory / STATE_FILE,
    )


def _load_state(directory: Path, task: Task) -> tuple[TrainState, FoundWidths]:
    saved = torch.load(directory / STATE_FILE, weights_only=False)
    train_state = saved["train"]
    train_state["records"] = tuple(EpochRecord(**r) for r in train_state["records"])
    found = dict(saved["found"])
    found["widths"] = Widths.from_mapping(task.space, found["widths"])
    return TrainState(**train_state), FoundWidths(**found)


def distillation(config: Mapping[str, Any]) -> dict[str, Any]:
    """`teacher` and `distill` for the training loop when the trial distils from a trained teacher."""
    if not config.get("distill.teacher"):
        return {}
    teacher = load_teacher(
        config["distill.teacher"], config.get("distill.teacher_model"), config.get("distill.teacher_widths")
    )
    settings = DistillConfig(
        float(config.get("distill.alpha", 0.4)), float(config.get("distill.temperature", 4.0))
    )
    return {"teacher": teacher, "distill": settings}


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: search, match, materialise, train from scratch, report and checkpoint every epoch."""
    from ray import tune

    config = expand_point(config)
    threads = config.get("resources.cpu")
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    spec = canonical_spec(config["model"])
    cost_model = CostModel.from_spec(spec)
    target = resolve_cost_target(unflatten(config, "cost_target"), cost_model)
    recipe = train_config(config)
    task = Task(
        model=spec,
        data=load_dataset(data_spec(config)),
        train=recipe,
        cost_model=cost_model,
        cost_target=target.value if target else None,
        convention=target.convention if target else "macs",
        params=unflatten(config, "method"),
        trial_params=config,
        seed=recipe.seed,
    )
    resume: TrainState | None = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume, found = _load_state(Path(directory), task)
    else:
        found = find_widths(task, config["method"])
        artifact = make_artifact(
            spec,
            found.widths,
            method=config["method"],
            provenance={"trial": dict(config), "search": dict(found.info), "multiplier": found.multiplier},
            cost_model=cost_model,
        )
        artifact.save(Path(tune.get_context().get_trial_dir()) / WIDTHS_FILE)

    recipe = retraining(config, recipe, found, cost_model)
    model = materialize(spec, found.widths, seed=recipe.seed)
    if resume is None:
        weights = starting_weights(config, found, config["method"])
        if weights is not None:
            model.load_state_dict(weights)
    latest: list[TrainState] = []

    def report(record: EpochRecord) -> None:
        metrics = epoch_metrics(record, found, cost_model, target, recipe.epochs)
        with tempfile.TemporaryDirectory() as directory:
            _save_state(Path(directory), latest[-1], found)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    try:
        history = train(
            model,
            task.data,
            recipe,
            resume=resume,
            on_checkpoint=latest.append,
            on_epoch=report,
            **distillation(config),
        )
    except NonFiniteLossError as error:
        # a property of the configuration, not a transient fault: end the trial (no retry) and say why
        last = latest[-1].records[-1] if latest else None
        metrics = epoch_metrics(last, found, cost_model, target, recipe.epochs) if last else {}
        metrics.update(error=f"NonFiniteLossError: {error}", val_acc=0.0, val_loss=ERRORED_LOSS)
        metrics.setdefault("epoch", 0)
        tune.report(metrics)
        return
    if resume is not None and len(history.records) == len(resume.records):
        # restored after the last epoch was checkpointed: report it once more so the trial has a final result
        tune.report(epoch_metrics(history.final, found, cost_model, target, recipe.epochs))
