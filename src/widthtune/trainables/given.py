"""`given`: train a width vector someone already has — a transferred proxy result or an exported widths.json."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from widthtune.models.artifact import load_widths
from widthtune.models.space import ChannelSpace
from widthtune.models.widths import Widths
from widthtune.trainables.method import Method
from widthtune.trainables.registry import register
from widthtune.trainables.task import SearchResult, Task

DEFAULTS: dict[str, Any] = {"widths": None, "file": None, "match": False}


def search(task: Task) -> SearchResult:
    """The given widths (from the config or a file); scaled to the cost target only when `match` is set."""
    params = {**DEFAULTS, **task.params}
    if params["widths"] is not None:
        widths = Widths.from_mapping(task.space, params["widths"])
        source = "config"
    else:
        widths = load_widths(params["file"], task.model).widths
        source = str(Path(params["file"]).expanduser().resolve())
    return SearchResult(widths, match_target=bool(params["match"]), info={"source": source})


def check_model(params: Mapping[str, Any], space: ChannelSpace) -> None:
    """Given widths name the model's groups, each a legal width."""
    merged = {**DEFAULTS, **params}
    if merged["widths"] is not None:
        Widths.from_mapping(space, merged["widths"])


def check(params: Mapping[str, Any]) -> None:
    """Exactly one of `widths` (a group -> channels mapping) and `file` (a widths.json path)."""
    merged = {**DEFAULTS, **params}
    if (merged["widths"] is None) == (merged["file"] is None):
        raise ValueError(
            "method.widths/file: give exactly one: widths (group: channels) or file (a widths.json)"
        )
    if merged["widths"] is not None and not isinstance(merged["widths"], Mapping):
        raise ValueError(
            f"method.widths: {merged['widths']!r} is not allowed; write a mapping group: channels"
        )
    if merged["file"] is not None and not Path(str(merged["file"])).expanduser().is_file():
        raise ValueError(f"method.file: {merged['file']!r} is not a file; give the path of a widths.json")
    if not isinstance(merged["match"], bool):
        raise ValueError(f"method.match: {merged['match']!r} is not allowed; choose true or false")


METHOD = register(
    Method(
        name="given",
        search=search,
        defaults=DEFAULTS,
        summary="train given widths (a mapping or a widths.json), optionally scaled to the cost target",
        check=check,
        optimises_widths=False,
        check_model=check_model,
    )
)
