"""The accuracy-cost Pareto front over every trial and cost target: which trials no other trial beats on both."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import EngFormatter

from widthtune.analysis.grouping import method_group
from widthtune.analysis.plots import save_figure
from widthtune.analysis.units import ACCURACY_UNIT, percent
from widthtune.results.roles import ARTIFACT, PROXY

# a proxy's MACs are on another model, and an artifact's training is no candidate
OFF_FRONT_ROLES = (PROXY, ARTIFACT)


def non_dominated(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points that no other point matches or beats on both and beats on one."""
    front = []
    for i, (cost, acc) in enumerate(points):
        beaten = any(
            c <= cost and a >= acc and (c < cost or a > acc) for j, (c, a) in enumerate(points) if j != i
        )
        if not beaten:
            front.append(i)
    return front


@dataclass(frozen=True)
class Front:
    """The trials on the accuracy-MACs plane, which of them are non-dominated, and the accuracy used."""

    metric: str  # the store's column: final_test_acc, or final_val_acc when some trial has no test accuracy
    candidates: list[dict[str, Any]]
    front: list[dict[str, Any]]  # sorted by MACs

    @property
    def metric_name(self) -> str:
        """The accuracy as a reader names it."""
        return "test accuracy" if self.metric == "final_test_acc" else "validation accuracy"


def pareto_front(rows: list[dict[str, Any]]) -> Front:
    """Completed and stopped trials (never errored ones, proxies or artifacts) and their non-dominated set."""
    eligible = [
        r for r in rows if r["role"] not in OFF_FRONT_ROLES and r["status"] != "errored" and r["macs"]
    ]
    metric = "final_test_acc" if all(r["final_test_acc"] is not None for r in eligible) else "final_val_acc"
    candidates = [r for r in eligible if r[metric] is not None]
    front = [candidates[i] for i in non_dominated([(r["macs"], r[metric]) for r in candidates])]
    return Front(metric, candidates, sorted(front, key=lambda r: (r["macs"], -r[metric])))


def pareto_plot(front: Front, path: Path) -> Path:
    """Accuracy against MACs, a colour per method; stopped trials as triangles; the front circled and joined."""
    fig, ax = plt.subplots(figsize=(7, 4.4))
    groups = sorted({method_group(r) for r in front.candidates})
    colours = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    for group in groups:
        for status, marker in (("completed", "o"), ("stopped", "v")):
            mine = [r for r in front.candidates if method_group(r) == group and r["status"] == status]
            if mine:
                ax.scatter(
                    [r["macs"] for r in mine],
                    [percent(r[front.metric]) for r in mine],
                    marker=marker,
                    s=22 if status == "completed" else 26,
                    alpha=0.85,
                    color=colours[group],
                    label=group if status == "completed" else f"{group} (stopped)",
                )
    xs = [r["macs"] for r in front.front]
    ys = [percent(r[front.metric]) for r in front.front]
    ax.plot(xs, ys, color="black", linewidth=1.0, zorder=1)
    ax.scatter(xs, ys, s=110, facecolors="none", edgecolors="black", linewidths=1.2, label="Pareto front")
    costs = [r["macs"] for r in front.candidates]
    if costs and max(costs) > 10 * min(costs):
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel("MACs")
    ax.set_ylabel(f"{front.metric_name} ({ACCURACY_UNIT})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)
