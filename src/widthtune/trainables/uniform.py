"""`uniform`: the base shape scaled by one width multiplier to the cost target (the baseline every paper uses)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from widthtune.models.widths import Widths
from widthtune.trainables.method import Method
from widthtune.trainables.registry import register
from widthtune.trainables.task import SearchResult, Task

DEFAULTS: dict[str, Any] = {"multiplier": None}


def search(task: Task) -> SearchResult:
    """The base widths, matched to the target by the adapter; a fixed `multiplier` (e.g. a widened teacher) instead."""
    multiplier = task.params.get("multiplier")
    if multiplier is not None:
        return SearchResult(Widths.base(task.space).scale(float(multiplier)), match_target=False)
    return SearchResult(Widths.base(task.space), info={"shape": "base"})


def check(params: Mapping[str, Any]) -> None:
    """A fixed multiplier, when given, is a positive number."""
    value = params.get("multiplier")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
        raise ValueError(
            f"method.multiplier: {value!r} is not allowed; choose a number > 0, or null to match"
        )


METHOD = register(
    Method(
        name="uniform",
        search=search,
        defaults=DEFAULTS,
        summary="one width multiplier on the base model, matched to the cost target (or fixed by `multiplier`)",
        check=check,
        optimises_widths=False,
    )
)
