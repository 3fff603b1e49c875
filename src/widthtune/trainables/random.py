"""`random`: a random width shape (per-group multipliers), matched to the cost target — the control for search."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from widthtune.models.widths import Widths
from widthtune.search_spaces.width_space import WidthSpace, check_width_params
from widthtune.trainables.method import Method
from widthtune.trainables.registry import register
from widthtune.trainables.task import SearchResult, Task

DEFAULTS = {"low": 0.25, "high": 1.0, "space": "group", "shape_seed": None}


def _space(task: Task) -> WidthSpace:
    params = {**DEFAULTS, **task.params}
    return WidthSpace(task.space, params["space"], float(params["low"]), float(params["high"]), matched=True)


def search(task: Task) -> SearchResult:
    """Draw multipliers uniformly in [low, high] from a seeded generator (shape_seed, else the trial's seed)."""
    shape_seed = task.params.get("shape_seed")
    seed = task.seed if shape_seed is None else int(shape_seed)
    space = _space(task)
    rng = np.random.default_rng(seed)
    draws = {key: float(rng.uniform(space.low, space.high)) for key in space.param_names()}
    widths = Widths.from_mapping(task.space, space.shape(draws), round=True)
    return SearchResult(widths, info={"shape_seed": seed, "multipliers": draws})


def check(params: Mapping[str, Any]) -> None:
    """Bounds and granularity are valid."""
    merged = {**DEFAULTS, **params}
    check_width_params(merged["space"], merged["low"], merged["high"])


METHOD = register(
    Method(
        name="random",
        search=search,
        defaults=DEFAULTS,
        summary="random per-group multipliers in [low, high], matched to the cost target",
        check=check,
    )
)
