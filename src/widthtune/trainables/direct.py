"""`direct`: the width vector itself is the search space; Tune's searcher proposes it, the scheduler stops weak trials."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from widthtune.models.space import ChannelSpace
from widthtune.search_spaces.width_space import WidthSpace, check_width_params
from widthtune.trainables.method import Method
from widthtune.trainables.registry import register
from widthtune.trainables.task import SearchResult, Task

DEFAULTS = {"space": "group", "low": 0.25, "high": 2.0, "matched": True}


def width_space(space: ChannelSpace, params: Mapping[str, Any]) -> WidthSpace:
    """The width space these hyperparameters describe (built the same way in the driver and in the trial)."""
    merged = {**DEFAULTS, **params}
    return WidthSpace(
        space, merged["space"], float(merged["low"]), float(merged["high"]), bool(merged["matched"])
    )


def search(task: Task) -> SearchResult:
    """Decode the sampled `widths.*` multipliers; matched directions are scaled to the target by the adapter."""
    ws = width_space(task.space, task.params)
    widths = ws.widths(task.trial_params)
    multipliers = {key: float(task.trial_params[key]) for key in ws.param_names()}
    return SearchResult(widths, match_target=ws.matched, info={"multipliers": multipliers})


def check(params: Mapping[str, Any]) -> None:
    """Space, bounds and `matched` are valid."""
    merged = {**DEFAULTS, **params}
    check_width_params(merged["space"], merged["low"], merged["high"])
    if not isinstance(merged["matched"], bool):
        raise ValueError(f"method.matched: {merged['matched']!r} is not allowed; choose true or false")


METHOD = register(
    Method(
        name="direct",
        search=search,
        defaults=DEFAULTS,
        summary="the width vector is the Tune/Optuna space (per group or per stage), cost-matched or constrained",
        check=check,
        width_space=width_space,
        fixed_keys=("space", "low", "high", "matched"),
    )
)
