"""Figures over time: learning curves per method (validation accuracy per epoch) and each study's optimisation
history (the best validation accuracy so far against the order in which trials finished)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from widthtune.analysis.grouping import by_study, method_group
from widthtune.analysis.plots import save_figure
from widthtune.analysis.units import ACCURACY_UNIT, percent

STATUS_STYLES = {"completed": "-", "stopped": "--", "errored": ":"}


def learning_curves_plot(rows: list[dict[str, Any]], epochs: list[dict[str, Any]], path: Path) -> Path | None:
    """A panel per method, a line per trial: validation accuracy after each epoch (None without epochs)."""
    trials = {r["trial_key"]: r for r in rows}
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for e in epochs:
        if e["trial_key"] in trials and e["val_acc"] is not None and e["epoch"] is not None:
            curves[e["trial_key"]].append((int(e["epoch"]), percent(e["val_acc"])))
    panels: dict[str, list[str]] = defaultdict(list)
    for key in sorted(curves, key=lambda k: trials[k]["trial_key"]):
        panels[method_group(trials[key])].append(key)
    if not panels:
        return None
    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.0 * lines), sharey=True, squeeze=False)
    for ax, (group, keys) in zip(axes.flat, sorted(panels.items()), strict=False):
        thin = len(keys) > 12
        for i, key in enumerate(keys):
            points = sorted(curves[key])
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                linestyle=STATUS_STYLES.get(trials[key]["status"], "-"),
                marker="o" if len(points) < 15 and not thin else None,
                markersize=2.5,
                linewidth=0.8 if thin else 1.2,
                alpha=0.6 if thin else 0.9,
                color=f"C{i % 10}",
            )
        ax.set_title(f"{group} ({len(keys)} trials)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"val accuracy ({ACCURACY_UNIT})")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    legend = [Line2D([], [], color="grey", linestyle=s, label=status) for status, s in STATUS_STYLES.items()]
    axes[0, 0].legend(handles=legend, fontsize=7, loc="lower right")
    return save_figure(fig, path)


def best_so_far(values: Sequence[float]) -> list[float]:
    """The running maximum: what the search had found after each trial."""
    out: list[float] = []
    for value in values:
        out.append(value if not out else max(out[-1], value))
    return out


def history(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per study of at least two scored trials: validation accuracies (report unit) in the order trials finished."""
    out = {}
    for study, trials in by_study(rows).items():
        values = [percent(t["final_val_acc"]) for t in trials if t["final_val_acc"] is not None]
        if len(values) >= 2:
            out[study] = values
    return out


def optimisation_history_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Per study: each trial's validation accuracy (dots) and the best so far (a step line), by trial order."""
    studies = history(rows)
    if not studies:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (study, values) in enumerate(studies.items()):
        order = range(1, len(values) + 1)
        colour = f"C{i % 10}"
        ax.scatter(order, values, s=12, alpha=0.5, color=colour)
        ax.step(order, best_so_far(values), where="post", color=colour, label=study)
    ax.set_xlabel("trial (in the order trials finished)")
    ax.set_ylabel(f"best val accuracy so far ({ACCURACY_UNIT})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7 if len(studies) < 8 else 5)
    return save_figure(fig, path)
