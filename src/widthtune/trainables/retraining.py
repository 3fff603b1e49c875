"""Rethinking's retraining budgets: Scratch-E, Scratch-B and the fine-tuning baseline, as training recipes.

- `scratch-e` trains the pruned model from scratch for the recipe's own epochs.
- `scratch-b` trains it for the same compute as the full model: epochs x cost_full / cost_pruned (rounded),
  at most 2x at ImageNet scale, with the decay schedule (milestones, step size, warm-up) stretched by the
  same factor so every decay happens at the same fraction of training.
- `finetune` continues from inherited weights for the chapter's budget (40 epochs at CIFAR scale, 20 at
  ImageNet scale, the dataset's declared `scale`; `finetune_epochs` sets another), at the recipe's smallest
  learning rate, held constant:
  `constant` -> lr; `step` -> lr x gamma^((epochs - 1) // step_size), the rate of the last epoch;
  `multistep` -> lr x gamma^(milestones reached by the last epoch); `cosine` ends at zero, so its "smallest
  useful rate" is the mean of the cosine over the last quarter of training, lr x (1/2 - sqrt(2)/pi) ~ 0.05 lr
  -- the stretch where the standard CIFAR step recipe (milestones at 50% and 75%) holds its smallest rate.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from widthtune.search_spaces.domains import split_spaces
from widthtune.training.datasets import DatasetSplits, with_validation_in_training
from widthtune.training.loop import TrainConfig
from widthtune.training.streaming import StreamedSplits

RETRAIN_MODES = ("scratch-e", "scratch-b", "finetune")
# what the final retraining of found widths trains on: the training split (the validation split held out, as
# the search had it) or the whole training set (training + validation, as the papers report); never the test set
FINAL_TRAIN = ("split", "full")
LARGE_SCALE_BUDGET_CAP = 2.0  # Rethinking: on ImageNet, Scratch-B at most doubles the epochs
# Rethinking: "For CIFAR, training/fine-tuning takes 160/40 epochs. For ImageNet, ... 90/20 epochs."
FINETUNE_EPOCHS = {"cifar": 40, "imagenet": 20}
COSINE_LAST_QUARTER_MEAN = 0.5 - math.sqrt(2) / math.pi


def _round(value: float) -> int:
    """Round half up (Python's round() would send 2.5 to 2)."""
    return math.floor(value + 0.5)


def rescale_recipe(recipe: TrainConfig, epochs: int) -> TrainConfig:
    """The recipe run for `epochs`, its milestones, step size and warm-up moved proportionally."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"train.epochs: {epochs!r} is not allowed; choose an integer >= 1")
    factor = epochs / recipe.epochs
    return replace(
        recipe,
        epochs=epochs,
        milestones=tuple(max(1, _round(m * factor)) for m in recipe.milestones),
        step_size=max(1, _round(recipe.step_size * factor)),
        warmup_epochs=recipe.warmup_epochs * factor,
    )


def finetune_lr(recipe: TrainConfig) -> float:
    """The smallest learning rate the recipe trains at (for cosine: its mean over the last quarter)."""
    last_epoch = recipe.epochs - 1  # learning_rate() counts epochs from 0
    if recipe.schedule == "step":
        return recipe.lr * recipe.gamma ** (last_epoch // recipe.step_size)
    if recipe.schedule == "multistep":
        return recipe.lr * recipe.gamma ** sum(last_epoch >= m for m in recipe.milestones)
    if recipe.schedule == "cosine":
        return recipe.lr * COSINE_LAST_QUARTER_MEAN
    return recipe.lr


def budget_factor(full_cost: float, pruned_cost: float, large_scale: bool = False) -> float:
    """How many times longer Scratch-B trains: cost_full / cost_pruned, capped at 2 at ImageNet scale."""
    for name, value in (("full_cost", full_cost), ("pruned_cost", pruned_cost)):
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ValueError(f"retrain.{name}: {value!r} is not allowed; choose a positive number")
    if pruned_cost > full_cost:
        raise ValueError(
            f"retrain.pruned_cost: {pruned_cost:g} is more than full_cost {full_cost:g}; "
            "Scratch-B only lengthens training of a model cheaper than the full one"
        )
    factor = full_cost / pruned_cost
    return min(factor, LARGE_SCALE_BUDGET_CAP) if large_scale else factor


def retrain_recipe(
    mode: str,
    recipe: TrainConfig,
    full_cost: float,
    pruned_cost: float,
    large_scale: bool = False,
    finetune_epochs: int | None = None,
) -> TrainConfig:
    """The recipe the pruned model is retrained with under one of RETRAIN_MODES."""
    if mode not in RETRAIN_MODES:
        raise ValueError(f"retrain.mode: {mode!r} is not allowed; choose one of: {', '.join(RETRAIN_MODES)}")
    factor = budget_factor(full_cost, pruned_cost, large_scale)
    if mode == "scratch-e":
        return recipe
    if mode == "scratch-b":
        return rescale_recipe(recipe, max(1, _round(recipe.epochs * factor)))
    default = FINETUNE_EPOCHS["imagenet" if large_scale else "cifar"]
    epochs = default if finetune_epochs is None else finetune_epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"retrain.finetune_epochs: {epochs!r} is not allowed; choose an integer >= 1")
    return replace(
        recipe,
        epochs=epochs,
        lr=finetune_lr(recipe),
        schedule="constant",
        milestones=(),
        warmup_epochs=0.0,
    )


@dataclass(frozen=True)
class Retraining:
    """How a trial retrains its found widths: the mode, fine-tuning's epochs, whether the data is ImageNet-scale.

    `large_scale` left unset means the dataset's declared scale (`DataSpec.scale`): capped Scratch-B and 20
    fine-tuning epochs at ImageNet scale, uncapped and 40 at CIFAR scale.
    """

    mode: str = "scratch-e"
    finetune_epochs: int | None = None
    large_scale: bool | None = None
    final_train: str = "split"

    def __post_init__(self) -> None:
        if self.mode not in RETRAIN_MODES:
            raise ValueError(
                f"retrain.mode: {self.mode!r} is not allowed; choose one of: {', '.join(RETRAIN_MODES)}"
            )
        epochs = self.finetune_epochs
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"retrain.finetune_epochs: {epochs!r} is not allowed; choose an integer >= 1")
        if self.final_train not in FINAL_TRAIN:
            raise ValueError(
                f"retrain.final_train: {self.final_train!r} is not allowed; choose one of: {', '.join(FINAL_TRAIN)}"
            )
        if self.large_scale is not None and not isinstance(self.large_scale, bool):
            raise ValueError(
                f"retrain.large_scale: {self.large_scale!r} is not allowed; choose true or false"
            )

    def recipe(
        self, recipe: TrainConfig, full_cost: float, pruned_cost: float, data_scale: str
    ) -> TrainConfig:
        """The recipe the found widths train with under this mode (Rethinking's budgets at `data_scale`)."""
        if self.mode == "scratch-e":
            return recipe
        large = self.large_scale if self.large_scale is not None else data_scale == "imagenet"
        return retrain_recipe(
            self.mode, recipe, full_cost, pruned_cost, large_scale=large, finetune_epochs=self.finetune_epochs
        )

    def training_data(self, data: DatasetSplits | StreamedSplits) -> DatasetSplits | StreamedSplits:
        """What the found widths train on: the training split, or with `final_train: full` training + validation."""
        return with_validation_in_training(data) if self.final_train == "full" else data


RETRAIN_FIELDS = tuple(f.name for f in fields(Retraining))


def retrain_modes(section: Mapping[str, Any], where: str) -> list[str]:
    """The modes a `retrain` section asks for (a value or a space of them), every candidate checked."""
    for key in section:
        if key not in RETRAIN_FIELDS:
            raise ValueError(f"{where}.{key}: unknown field; allowed: {', '.join(RETRAIN_FIELDS)}")
    constants, domains = split_spaces(dict(section), "retrain")
    modes = (
        list(domains["retrain.mode"].candidates())
        if "retrain.mode" in domains
        else [constants.get("retrain.mode", Retraining.mode)]
    )
    fixed = {k[len("retrain.") :]: v for k, v in constants.items() if k != "retrain.mode"}
    for mode in modes:
        try:
            Retraining(mode=mode, **fixed)
        except ValueError as error:
            raise ValueError(str(error).replace("retrain.", f"{where}.", 1)) from None
    return modes
