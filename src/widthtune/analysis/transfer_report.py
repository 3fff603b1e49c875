"""The transfer study's results: target accuracy against overhead saved (the paper's Figure 4) and width similarity.

Every point is a (method, projection, extrapolation rule) over seeds. Its overhead saved is given twice: by the
paper's formula (1 - width^2 x depth x resolution^2 x fraction) and as measured (1 - the FLOPs the proxy's width
optimisation spent / the FLOPs direct optimisation on the target spent, same method and seed). Similarity
compares the extrapolated widths with the directly optimised ones, per group, as ratios to the base widths.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from widthtune.analysis.plots import save_figure, width_profile_plot
from widthtune.analysis.units import ACCURACY_UNIT, accuracy_spread, percent
from widthtune.results.roles import BASELINE, DIRECT, TARGET
from widthtune.results.selection import mean_std, select, spent


@dataclass(frozen=True)
class TransferRow:
    """One method's point: direct or uniform control, or one projection under one extrapolation rule."""

    label: str
    source: str  # "direct", "uniform", or the projection label
    rule: str
    seeds: int
    test_acc_mean: float
    test_acc_std: float
    saved_formula: float
    saved_measured: float
    overhead_flops: float
    overhead_seconds: float
    similarity: float  # cosine similarity of width/base profiles with direct optimisation's (mean over seeds)


def _ratios(row: dict[str, Any]) -> list[float]:
    return [w / b for w, b in zip(row["widths"], row["base_widths"], strict=True)]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two width profiles (1 = the same shape up to one multiplier)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else float("nan")


def _chosen(rows: list[dict[str, Any]], role: str) -> dict[tuple[str, int], dict[str, Any]]:
    """The trial each (label, seed) hands in for a control role."""
    cells: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["role"] == role:
            cells[(row["label"], int(row["seed"]))].append(row)
    out = {}
    for key, trials in cells.items():
        chosen = select(trials)
        if chosen is not None:
            out[key] = chosen
    return out


def _spent(rows: list[dict[str, Any]], role: str) -> dict[tuple[str, int], tuple[float, float]]:
    cells: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["role"] == role:
            cells[(row["label"], int(row["seed"]))].append(row)
    return {key: spent(trials) for key, trials in cells.items()}


def transfer_rows(rows: list[dict[str, Any]]) -> list[TransferRow]:
    """Per method: direct control, each transferred point, and the uniform control, over seeds."""
    direct = _chosen(rows, DIRECT)
    uniform = _chosen(rows, BASELINE)
    direct_spent = _spent(rows, DIRECT)
    labels = sorted({r["label"] for r in rows if r["role"] in (TARGET, DIRECT)})
    out: list[TransferRow] = []
    for label in labels:
        controls = [c for (lab, _), c in sorted(direct.items()) if lab == label]
        if controls:
            used = [direct_spent[(label, int(c["seed"]))] for c in controls]
            acc = mean_std([c["final_test_acc"] for c in controls])
            out.append(
                TransferRow(
                    label,
                    "direct",
                    "-",
                    len(controls),
                    *acc,
                    0.0,
                    0.0,
                    statistics.fmean(s[0] for s in used),
                    statistics.fmean(s[1] for s in used),
                    1.0,
                )
            )
        points: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            if row["role"] == TARGET and row["label"] == label and row["status"] != "errored":
                points[(row["projection"], row["extrapolation"])].append(row)
        for (projection, rule), trials in sorted(points.items()):
            measured, similarity = [], []
            for t in trials:
                reference = direct_spent.get((label, int(t["seed"])))
                if reference and reference[0]:
                    measured.append(1.0 - (t["overhead_flops"] or 0.0) / reference[0])
                control = direct.get((label, int(t["seed"])))
                if control is not None and control["widths"] and t["widths"]:
                    similarity.append(cosine(_ratios(t), _ratios(control)))
            scored = [t for t in trials if t["final_test_acc"] is not None]
            out.append(
                TransferRow(
                    label,
                    projection,
                    rule,
                    len(scored),
                    *mean_std([t["final_test_acc"] for t in scored]),
                    1.0 - statistics.fmean(t["overhead_ratio"] for t in trials),
                    statistics.fmean(measured) if measured else float("nan"),
                    statistics.fmean(t["overhead_flops"] or 0.0 for t in trials),
                    statistics.fmean(t["overhead_seconds"] or 0.0 for t in trials),
                    statistics.fmean(similarity) if similarity else float("nan"),
                )
            )
    controls = list(uniform.values())
    if controls:
        out.append(
            TransferRow(
                "uniform",
                "uniform",
                "-",
                len(controls),
                *mean_std([c["final_test_acc"] for c in controls]),
                float("nan"),
                float("nan"),
                0.0,
                0.0,
                float("nan"),
            )
        )
    return out


TRANSFER_HEADER = (
    "method",
    "widths from",
    "extrapolation",
    "seeds",
    f"target test acc {ACCURACY_UNIT} (mean ± std)",
    "overhead saved (formula)",
    "overhead saved (measured)",
    "optimisation FLOPs",
    "optimisation seconds",
    "cosine to direct",
)


def _pct(value: float) -> str:
    return "-" if value != value else f"{100 * value:.1f}%"


def transfer_cells(row: TransferRow) -> tuple[str, ...]:
    """A transfer row as printable cells."""
    acc = "-" if row.seeds == 0 else accuracy_spread(row.test_acc_mean, row.test_acc_std)
    return (
        row.label,
        row.source,
        row.rule,
        str(row.seeds),
        acc,
        _pct(row.saved_formula),
        _pct(row.saved_measured),
        f"{row.overhead_flops:.3g}",
        f"{row.overhead_seconds:.1f}",
        "-" if row.similarity != row.similarity else f"{row.similarity:.3f}",
    )


def group_similarity(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[float]]]:
    """Per group, 1 - |transferred - direct| / max(both) of the width/base ratios, mean over seeds, per point."""
    direct = _chosen(rows, DIRECT)
    names: list[str] = []
    columns: dict[str, list[list[float]]] = defaultdict(list)
    for row in rows:
        control = direct.get((row["label"], int(row["seed"]))) if row["role"] == TARGET else None
        if control is None or not row["widths"] or not control["widths"] or row["status"] == "errored":
            continue
        names = row["group_names"]
        agreement = [1 - abs(a - b) / max(a, b) for a, b in zip(_ratios(row), _ratios(control), strict=True)]
        columns[f"{row['label']} {row['projection']} {row['extrapolation']}"].append(agreement)
    return names, {k: [statistics.fmean(c) for c in zip(*v, strict=True)] for k, v in sorted(columns.items())}


def _saved(row: TransferRow) -> float:
    """The measured saving where the direct control was run, else the formula's."""
    return row.saved_measured if row.saved_measured == row.saved_measured else row.saved_formula


def transfer_curve_plot(table: list[TransferRow], path: Path) -> Path:
    """Target accuracy vs measured overhead saved per method, with direct and uniform levels (Figure 4)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    uniform = [r for r in table if r.source == "uniform"]
    for label in sorted({r.label for r in table if r.source != "uniform"}):
        mine = [r for r in table if r.label == label]
        colour = None
        for rule in sorted({r.rule for r in mine if r.source not in ("direct", "uniform")}):
            points = sorted((r for r in mine if r.rule == rule and r.seeds), key=_saved)
            xs = [100 * _saved(r) for r in points]
            line = ax.errorbar(
                xs,
                [percent(r.test_acc_mean) for r in points],
                yerr=[percent(r.test_acc_std) for r in points],
                marker="o",
                capsize=3,
                label=f"{label}: transferred ({rule})",
            )
            colour = colour or line[0].get_color()
            for r, x in zip(points, xs, strict=True):
                ax.annotate(r.source, (x, percent(r.test_acc_mean)), fontsize=6)
        direct = [r for r in mine if r.source == "direct" and r.seeds]
        if direct:
            d = direct[0]
            ax.errorbar(
                [0],
                [percent(d.test_acc_mean)],
                yerr=[percent(d.test_acc_std)],
                marker="s",
                capsize=3,
                color=colour,
            )
            ax.axhline(
                percent(d.test_acc_mean),
                color=colour,
                linestyle="--",
                linewidth=0.9,
                label=f"{label}: direct optimisation",
            )
    if uniform and uniform[0].seeds:
        ax.axhline(percent(uniform[0].test_acc_mean), color="grey", linestyle=":", label="uniform baseline")
    ax.set_xlabel("width optimisation overhead saved (%, measured FLOPs)")
    ax.set_ylabel(f"target test accuracy ({ACCURACY_UNIT})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def transfer_section(
    rows: list[dict[str, Any]], out: Path
) -> tuple[list[TransferRow], list[tuple[str, Path]], list[str], dict[str, list[float]]]:
    """The transfer table, its figures (curve and width profiles) and the per-group similarity."""
    table = transfer_rows(rows)
    figures: list[tuple[str, Path]] = []
    if any(r.source not in ("direct", "uniform") for r in table):
        figures.append(
            (
                "Width transfer: target accuracy vs overhead saved (mean ± std over seeds)",
                transfer_curve_plot(table, out / "transfer_curve.png"),
            )
        )
    names, similarity = group_similarity(rows)
    profiles: dict[str, list[float]] = {}
    handed_in = {id(c) for c in _chosen(rows, DIRECT).values()}
    for role, name in ((DIRECT, "direct"), (TARGET, None)):
        cells: dict[str, list[list[float]]] = defaultdict(list)
        for row in rows:
            if row["role"] == role and row["widths"] and row["status"] != "errored":
                if role == DIRECT and id(row) not in handed_in:
                    continue
                key = f"{row['label']} {name or row['projection'] + ' ' + row['extrapolation']}"
                cells[key].append(_ratios(row))
                names = names or row["group_names"]
        profiles.update({k: [statistics.fmean(c) for c in zip(*v, strict=True)] for k, v in cells.items()})
    if profiles and names:
        figures.append(
            (
                "Extrapolated vs directly optimised widths / base per group (mean over seeds)",
                width_profile_plot(names, profiles, out / "transfer_widths.png"),
            )
        )
    return table, figures, names, similarity
