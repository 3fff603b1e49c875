"""Figures: width profiles relative to the base; how every figure is saved and inlined into the HTML report."""

from __future__ import annotations

import base64
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


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write the figure as a PNG beside the report (Markdown links to it) and free it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def data_uri(path: Path) -> str:
    """A PNG as a data URI, so the HTML report carries its figures inside itself."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
