"""The report's one unit for accuracy: percent with two decimals, in every table, caption and axis."""

from __future__ import annotations

ACCURACY_UNIT = "%"
ACCURACY_DECIMALS = 2


def percent(value: float | None) -> float:
    """A stored accuracy (a fraction) in the report's unit; NaN when missing."""
    return float("nan") if value is None else 100.0 * value


def accuracy_text(value: float | None) -> str:
    """One accuracy as printed everywhere in the report ("-" when missing or NaN)."""
    shown = percent(value)
    return "-" if shown != shown else f"{shown:.{ACCURACY_DECIMALS}f}"


def accuracy_spread(mean: float, std: float) -> str:
    """Mean ± std over seeds of an accuracy, in the report's unit ("-" when there is none)."""
    if mean != mean:
        return "-"
    return f"{accuracy_text(mean)} ± {accuracy_text(std)}"
