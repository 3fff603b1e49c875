"""Which trial a method hands in for a seed, and the statistics taken over seeds."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for one seed, NaN for none)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def select(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial a method hands in: best final validation accuracy among completed (else stopped) trials."""
    for pool in (
        [t for t in trials if t["status"] == "completed"],
        [t for t in trials if t["status"] == "stopped"],
    ):
        scored = [t for t in pool if t["final_val_acc"] is not None]
        if scored:
            return max(scored, key=lambda t: (t["final_val_acc"], -(t["macs"] or 0)))
    return None


def spent(trials: Iterable[dict[str, Any]]) -> tuple[float, float]:
    """What a method spent on some trials: FLOPs (search + training) and wall seconds."""
    trials = list(trials)
    flops = sum((t["search_flops"] or 0.0) + (t["train_flops"] or 0.0) for t in trials)
    return flops, sum(t["wall_seconds"] or 0.0 for t in trials)
