"""What a method is: its search and everything it declares about itself, so no other module tests its name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from widthtune.models.space import ChannelSpace
from widthtune.search_spaces.width_space import WidthSpace
from widthtune.trainables.artifacts import ArtifactContext, ArtifactRecipe
from widthtune.trainables.task import SearchResult, Task


def accept_any(params: Mapping[str, Any]) -> None:
    """The check of a method whose hyperparameters need none beyond their defaults' names."""


def needs_nothing(params: Mapping[str, Any], context: ArtifactContext) -> Mapping[str, ArtifactRecipe]:
    """The artifacts of a method that trains nothing shared."""
    return {}


@dataclass(frozen=True)
class Method:
    """A registered method: its search, hyperparameter defaults and check, and the capabilities it declares.

    - `optimises_widths`: its result is a searched width vector (transfer studies transfer only these).
    - `keeps_weights`: its result carries the pruned model's weights, so it can be fine-tuned.
    - `prunes`: it prunes a trained model (Rethinking's controls take such a method as their source).
    - `width_space`: the width vector is the Tune/Optuna space these hyperparameters describe; the
      hyperparameters named in `fixed_keys` shape that space, so they must be values, not spaces.
    - `artifacts`: what it needs trained once and shared by its trials (name -> recipe); each trial finds
      the artifact's path in `Task.artifacts[name]`.
    - `widest`: the widths multiplier its result can reach at most (pruning keeps at most the base: 1; LW-DNA
      its widening beta); None: up to the largest widths a group may take. A cost target above is refused.
    - `check_model`: the checks that need the model's channel groups (widths it is handed), if any.
    """

    name: str
    summary: str
    search: Callable[[Task], SearchResult]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], None] = accept_any
    optimises_widths: bool = True
    keeps_weights: bool = False
    prunes: bool = False
    width_space: Callable[[ChannelSpace, Mapping[str, Any]], WidthSpace] | None = None
    fixed_keys: tuple[str, ...] = ()
    artifacts: Callable[[Mapping[str, Any], ArtifactContext], Mapping[str, ArtifactRecipe]] = needs_nothing
    widest: Callable[[Mapping[str, Any]], float] | None = None
    check_model: Callable[[Mapping[str, Any], ChannelSpace], None] | None = None

    def __post_init__(self) -> None:
        unknown = [k for k in self.fixed_keys if k not in self.defaults]
        if unknown:
            raise ValueError(
                f"method {self.name}: fixed key {unknown[0]!r} is not one of its hyperparameters"
            )
