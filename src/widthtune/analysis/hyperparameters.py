"""The searched hyperparameters: a trial's config values (its `params_json`) that differ between a study's trials.

A key counts as searched when its value differs between two trials of one study; the study's identity (seed,
label, study key) and what a transfer trial was handed (its source run, overhead, multiplier) never count.
Only scalar values are compared: a width vector handed to a trial is shown as its widths instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from widthtune.analysis.grouping import by_study, method_group
from widthtune.results.selection import select

Scalar = bool | int | float | str

# what names a trial rather than configures it
IDENTITY_KEYS = frozenset({"experiment", "study", "label", "seed", "role", "method", "trial_key"})
# what a transfer target trial was handed along with its widths: provenance, not a searched value
PROVENANCE_KEYS = frozenset(
    {
        "transfer.source_run_id",
        "transfer.source_trial",
        "transfer.proxy_model",
        "transfer.overhead_flops",
        "transfer.overhead_seconds",
        "transfer.overhead_ratio",
        "transfer.multiplier",
    }
)


def trial_params(row: dict[str, Any]) -> dict[str, Scalar]:
    """The trial's scalar config values, without its identity and provenance keys."""
    params = json.loads(row["params_json"] or "{}")
    return {
        k: v
        for k, v in params.items()
        if k not in IDENTITY_KEYS and k not in PROVENANCE_KEYS and isinstance(v, bool | int | float | str)
    }


def _varying(trials: list[dict[str, Any]]) -> set[str]:
    params = [trial_params(t) for t in trials]
    keys: set[str] = set().union(*params)
    return {k for k in keys if len({json.dumps(p.get(k)) for p in params}) > 1}


def searched_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Every key searched in some study of these trials, sorted."""
    found: set[str] = set()
    for trials in by_study(rows).values():
        found |= _varying(trials)
    return sorted(found)


def study_searched_keys(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per study: the keys its trials differ in."""
    return {study: sorted(_varying(trials)) for study, trials in by_study(rows).items()}


def value_text(value: Any) -> str:
    """A config value as the report prints it (floats to 4 significant digits)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


@dataclass(frozen=True)
class BestConfiguration:
    """A searching study's selected trial and the values it was trained with."""

    study: str
    group: str
    trial_key: str
    trials: int
    val_acc: float | None
    test_acc: float | None
    values: dict[str, Scalar] = field(default_factory=dict)


def best_configurations(rows: list[dict[str, Any]]) -> list[BestConfiguration]:
    """Per study that searched something: the trial `select` hands in, with its searched values."""
    out = []
    for study, trials in by_study(rows).items():
        keys = sorted(_varying(trials))
        chosen = select(trials)
        if not keys or chosen is None:
            continue
        params = trial_params(chosen)
        out.append(
            BestConfiguration(
                study=study,
                group=method_group(chosen),
                trial_key=chosen["trial_key"],
                trials=len(trials),
                val_acc=chosen["final_val_acc"],
                test_acc=chosen["final_test_acc"],
                values={k: params[k] for k in keys if k in params},
            )
        )
    return out
