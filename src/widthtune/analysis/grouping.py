"""How the report groups stored trials: by method (its label, with the role when not a plain trial) and by study."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from widthtune.results.roles import TRIAL


def method_group(row: dict[str, Any]) -> str:
    """The method a trial belongs to in figures: its label, plus its role when it is not a plain trial."""
    label = row["label"] or row["method"] or "-"
    return label if row["role"] in (TRIAL, None) else f"{label} ({row['role']})"


def by_study(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Trials per study (sorted by study key), each study's trials in the order they finished."""
    studies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        studies[row["study"] or "-"].append(row)
    return {k: sorted(v, key=finish_order) for k, v in sorted(studies.items())}


def finish_order(row: dict[str, Any]) -> tuple[float, str]:
    """When a trial finished (unknown last), then its key: the trial order of a search."""
    finished = row["finished_at"]
    return (float("inf") if finished is None else finished, row["trial_key"])
