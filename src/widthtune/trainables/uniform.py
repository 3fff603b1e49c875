"""`uniform`: the base shape scaled by one width multiplier to the cost target (the baseline every paper uses)."""

from __future__ import annotations

from widthtune.models.widths import Widths
from widthtune.trainables.task import Method, SearchResult, Task


def search(task: Task) -> SearchResult:
    """The base widths; the adapter matches them to the target with a single multiplier."""
    return SearchResult(Widths.base(task.space), info={"shape": "base"})


METHOD = Method(
    name="uniform",
    search=search,
    defaults={},
    summary="one width multiplier on the base model, matched to the cost target",
    searchable=False,
)
