"""The per-trial table: every stored trial with its status, method, hyperparameters, widths, accuracies, epochs,
wall time and MLflow run, and the searched ranges per study."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from widthtune.analysis.grouping import by_study, method_group
from widthtune.analysis.hyperparameters import searched_keys, study_searched_keys, trial_params, value_text
from widthtune.analysis.overview import mlflow_run_url
from widthtune.analysis.units import ACCURACY_UNIT, accuracy_text

# besides what a study searched, the config sections a reader compares methods by
SHOWN_PREFIXES = ("method.", "train.", "retrain.", "cost_target.")

TRIAL_HEADER = (
    "trial",
    "status",
    "method",
    "hyperparameters",
    "widths",
    f"val acc {ACCURACY_UNIT}",
    f"test acc {ACCURACY_UNIT}",
    "epochs",
    "wall s",
    "MLflow run",
)


@dataclass(frozen=True)
class TrialLine:
    """One trial's printable cells, its MLflow run and that run's page (None off an MLflow server)."""

    cells: tuple[str, ...]
    widths_title: str
    run_id: str | None
    run_url: str | None


def shown_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The table's hyperparameters: whatever a study searched, and method/train/retrain/cost keys that differ."""
    params = [trial_params(r) for r in rows]
    differing = {
        k
        for k in set().union(*params)
        if k.startswith(SHOWN_PREFIXES) and len({json.dumps(p.get(k)) for p in params}) > 1
    }
    return sorted(differing | set(searched_keys(rows)))


def compact_widths(widths: list[int] | None) -> str:
    """A width vector in one short cell."""
    return "/".join(str(w) for w in widths) if widths else "-"


def trial_lines(rows: list[dict[str, Any]], state: dict[str, Any]) -> list[TrialLine]:
    """Every trial, by study and then in the order the trials finished."""
    keys = shown_keys(rows)
    out = []
    for trials in by_study(rows).values():
        for row in trials:
            params = trial_params(row)
            hyper = ", ".join(f"{k}={value_text(params[k])}" for k in keys if k in params)
            names = row["group_names"] or []
            title = ", ".join(f"{n}={w}" for n, w in zip(names, row["widths"] or [], strict=False))
            planned, trained = row["epochs_planned"], row["epochs_trained"]
            run_id = row["mlflow_run_id"]
            out.append(
                TrialLine(
                    cells=(
                        row["trial_key"],
                        row["status"] or "-",
                        method_group(row),
                        hyper or "-",
                        compact_widths(row["widths"]),
                        accuracy_text(row["final_val_acc"]),
                        accuracy_text(row["final_test_acc"]),
                        f"{'-' if trained is None else trained}/{'-' if planned is None else planned}",
                        "-" if row["wall_seconds"] is None else f"{row['wall_seconds']:.1f}",
                        run_id or "-",
                    ),
                    widths_title=title,
                    run_id=run_id,
                    run_url=mlflow_run_url(state, run_id),
                )
            )
    return out


SEARCHED_HEADER = ("study", "method", "trials", "hyperparameter", "values tried")


def _values_tried(values: list[Any]) -> str:
    distinct = sorted({json.dumps(v) for v in values if v is not None})
    decoded = [json.loads(v) for v in distinct]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in decoded) and len(decoded) > 4:
        return f"{value_text(min(decoded))} – {value_text(max(decoded))} ({len(decoded)} values)"
    return ", ".join(value_text(v) for v in sorted(decoded, key=lambda v: (str(type(v)), v)))


def searched_table(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Per study and searched key: the values its trials tried (a range when there are many)."""
    studies = by_study(rows)
    out = []
    for study, keys in study_searched_keys(rows).items():
        trials = studies[study]
        params = [trial_params(t) for t in trials]
        for key in keys:
            out.append(
                (
                    study,
                    method_group(trials[0]),
                    str(len(trials)),
                    key,
                    _values_tried([p.get(key) for p in params]),
                )
            )
    return out
