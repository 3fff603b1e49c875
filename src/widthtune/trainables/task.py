"""The method protocol: every method is `search(task) -> SearchResult`, testable without Ray."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from widthtune.models.cost import CostModel
from widthtune.models.inherit import inherit_weights
from widthtune.models.match import COST_TOLERANCE
from widthtune.models.space import ChannelSpace
from widthtune.models.spec import ModelSpec
from widthtune.models.widths import Widths
from widthtune.training.datasets import DatasetSplits
from widthtune.training.loop import TrainConfig

# forward + backward = 3 x forward; a forward pass is 2 FLOPs per MAC
TRAIN_FLOPS_PER_MAC_PER_IMAGE = 6


@dataclass(frozen=True)
class Task:
    """What a method is asked to solve: a model, its data, a training recipe, a cost target and its settings.

    `params` are the method's hyperparameters for this trial (spaces already sampled); `trial_params` is the
    whole flat trial config, where a method that searches widths directly finds its `widths.*` dimensions;
    `artifacts` are the paths of the shared artifacts the method declared (name -> path).
    """

    model: ModelSpec
    data: DatasetSplits
    train: TrainConfig
    cost_model: CostModel
    cost_target: float | None
    convention: str = "macs"
    tolerance: float = COST_TOLERANCE
    params: Mapping[str, Any] = field(default_factory=dict)
    trial_params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    artifacts: Mapping[str, str] = field(default_factory=dict)

    @property
    def space(self) -> ChannelSpace:
        """The model's channel groups."""
        return self.cost_model.space


@dataclass(frozen=True)
class SearchResult:
    """A method's answer: a width vector (or shape), what finding it cost, and whether to match it to the target.

    `search_flops` counts forward + backward as 3 x forward, per the design's accounting rule. `weights`, when
    given, is a state dict for the model materialised at `widths` (kept weights to fine-tune from, or generated
    ones to start from); `info` must stay JSON-serialisable (kept channel indices go there).
    """

    widths: Widths
    search_flops: float = 0.0
    match_target: bool = True
    info: Mapping[str, Any] = field(default_factory=dict)
    weights: Mapping[str, Any] | None = None
    init_from_weights: bool = (
        False  # scratch training starts from `weights` (else they serve fine-tuning only)
    )
    # training from scratch starts every BN gamma at this value (Network Slimming's models: 0.5); None: 1
    bn_gamma_init: float | None = None


def pruned_result(
    task: Task,
    widths: Widths,
    model: nn.Module,
    space: ChannelSpace,
    kept: Mapping[str, Sequence[int]],
    images: int,
    info: Mapping[str, Any],
    *,
    bn_gamma_init: float | None = None,
) -> SearchResult:
    """What a pruning method hands in: the kept channels' weights (to fine-tune), its search priced as training the
    base model on `images` images, and its own widths (not re-matched to the target)."""
    return SearchResult(
        widths,
        search_flops=float(TRAIN_FLOPS_PER_MAC_PER_IMAGE * task.cost_model.base().macs * images),
        match_target=False,
        info={**info, "kept": {name: list(indices) for name, indices in kept.items()}},
        weights=inherit_weights(model, space, kept),
        bn_gamma_init=bn_gamma_init,
    )
