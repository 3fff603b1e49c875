"""Figures: width profiles relative to the base, and accuracy against cost."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def width_profile_plot(
    names: Sequence[str], profiles: Mapping[str, Sequence[float]], path: Path, title: str = ""
) -> Path:
    """One line per profile: width / base width per channel group, in model order."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(names) + 2), 3.6))
    for label, ratios in profiles.items():
        ax.plot(range(len(names)), ratios, marker="o", markersize=3, label=label)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("width / base")
    ax.set_title(title, fontsize=9)
    if len(profiles) > 1:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def accuracy_cost_plot(
    points: Mapping[str, Sequence[tuple[float, float]]], path: Path, xlabel: str = "MACs"
) -> Path:
    """Test accuracy against cost, one colour per method."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, xy in points.items():
        if xy:
            xs, ys = zip(*xy, strict=True)
            ax.scatter(xs, ys, label=label, s=18, alpha=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
