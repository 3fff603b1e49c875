"""Parallel coordinates per method: every searched hyperparameter and every per-group width that varies, each
axis normalised to its own range, one line per trial coloured by validation accuracy."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from widthtune.analysis.hyperparameters import study_searched_keys, trial_params, value_text
from widthtune.analysis.plots import save_figure
from widthtune.analysis.units import ACCURACY_UNIT, percent


@dataclass(frozen=True)
class Axis:
    """One vertical axis: its name, each trial's position in [0, 1] (NaN: no value) and its tick labels."""

    name: str
    positions: list[float]
    ticks: list[tuple[float, str]]


def _axis(name: str, values: list[Any]) -> Axis | None:
    present = [v for v in values if v is not None]
    if len({repr(v) for v in present}) < 2:
        return None
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        low, high = min(present), max(present)
        positions = [float("nan") if v is None else (v - low) / (high - low) for v in values]
        return Axis(name, positions, [(0.0, value_text(low)), (1.0, value_text(high))])
    levels = sorted({str(v) for v in present})
    spot = {level: i / (len(levels) - 1) for i, level in enumerate(levels)}
    positions = [float("nan") if v is None else spot[str(v)] for v in values]
    return Axis(name, positions, [(p, level) for level, p in spot.items()])


def parallel_axes(trials: list[dict[str, Any]]) -> list[Axis]:
    """The axes for these trials: the hyperparameters their studies searched, then the widths that vary."""
    keys = sorted({k for ks in study_searched_keys(trials).values() for k in ks})
    params = [trial_params(t) for t in trials]
    axes = [_axis(k, [p.get(k) for p in params]) for k in keys]
    names = trials[0]["group_names"] or []
    if names and all(t["group_names"] == names and t["widths"] for t in trials):
        axes += [_axis(f"width {n}", [t["widths"][i] for t in trials]) for i, n in enumerate(names)]
    return [a for a in axes if a is not None]


def parallel_plot(trials: list[dict[str, Any]], title: str, path: Path) -> Path | None:
    """The figure for one method's scored trials (None with fewer than 2 axes or 2 trials)."""
    trials = [t for t in trials if t["final_val_acc"] is not None and t["status"] != "errored"]
    axes = parallel_axes(trials) if len(trials) >= 2 else []
    if len(axes) < 2:
        return None
    scores = [percent(t["final_val_acc"]) for t in trials]
    norm = Normalize(min(scores), max(scores) if max(scores) > min(scores) else min(scores) + 1e-9)
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.05 * len(axes) + 2.0), 4.4))
    for i in sorted(range(len(trials)), key=lambda i: scores[i]):  # the best drawn last, on top
        ax.plot(
            range(len(axes)),
            [a.positions[i] for a in axes],
            color=cmap(norm(scores[i])),
            linewidth=1.1,
            alpha=0.8,
        )
    for x, a in enumerate(axes):
        ax.axvline(x, color="grey", linewidth=0.8)
        for position, text in a.ticks:
            ax.annotate(
                text, (x, position), xytext=(3, 0), textcoords="offset points", fontsize=6, va="center"
            )
    ax.set_xticks(range(len(axes)))
    ax.set_xticklabels([a.name for a in axes], rotation=35, ha="right", fontsize=7)
    ax.set_yticks([0, 1])
    ax.set_yticklabels(["min", "max"], fontsize=7)
    ax.set_xlim(-0.2, len(axes) - 0.5)
    ax.set_title(title, fontsize=9)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"val accuracy ({ACCURACY_UNIT})")
    return save_figure(fig, path)


def slug(text: str) -> str:
    """A file-name-safe form of a method's name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "method"
