"""The experiment report: comparison table over seeds, accuracy vs MACs, width profiles — Markdown and HTML."""

from __future__ import annotations

import html
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from widthtune.analysis.plots import accuracy_cost_plot, width_profile_plot
from widthtune.analysis.transfer_report import TRANSFER_HEADER, transfer_cells, transfer_section
from widthtune.results.roles import ARTIFACT, NOT_COMPARED, PROXY, TARGET, TRIAL
from widthtune.results.selection import mean_std, select, spent
from widthtune.results.store import read_trials


@dataclass(frozen=True)
class ComparisonRow:
    """One method at one cost target: its selected trials' figures, mean and std over seeds."""

    label: str
    cost_target: str
    seeds: int
    test_acc_mean: float
    test_acc_std: float
    val_acc_mean: float
    macs_mean: float
    params_mean: float
    cost_flops_mean: float
    trials: int
    stopped: int
    errored: int


def by_seed(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[int, list[dict[str, Any]]]]:
    """Trials grouped by (method label, cost target), then by seed: the cells a method is compared over.

    When the experiment retrains in several modes (Rethinking's protocol), the label carries the mode.
    """
    modes = {row.get("retrain") or "scratch-e" for row in rows}
    groups: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        label = row["label"] or row["method"]
        if len(modes) > 1:
            label = f"{label} [{row.get('retrain') or 'scratch-e'}]"
        groups[(label, row["cost_target_label"] or "-")][row["seed"]].append(row)
    return groups


RETRAIN_COLUMNS = (("finetune", "Fine-tuned"), ("scratch-e", "Scratch-E"), ("scratch-b", "Scratch-B"))


def rethinking_table(rows: list[dict[str, Any]]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The chapter's table: per method and cost target, test accuracy under Fine-tuned / Scratch-E / Scratch-B."""
    cells: dict[tuple[str, str], dict[str, dict[int, list[dict[str, Any]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for row in rows:
        if row["role"] in NOT_COMPARED:
            continue
        key = (row["label"] or row["method"], row["cost_target_label"] or "-")
        cells[key][row.get("retrain") or "scratch-e"][row["seed"]].append(row)
    header = ("method", "cost target", *(title for _, title in RETRAIN_COLUMNS))
    table = []
    for (label, target), modes in sorted(cells.items()):
        line = [label, target]
        for mode, _ in RETRAIN_COLUMNS:
            chosen = [c for c in (select(v) for v in modes.get(mode, {}).values()) if c is not None]
            mean, std = mean_std([c["final_test_acc"] for c in chosen])
            line.append("-" if not chosen else f"{100 * mean:.2f} ± {100 * std:.2f}")
        table.append(tuple(line))
    return header, table


def width_pattern_table(rows: list[dict[str, Any]]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Per layer (group): the base width and each method's selected width, mean ± std over seeds."""
    patterns: dict[str, list[list[int]]] = {}
    names: list[str] = []
    bases: list[int] = []
    for (label, target), seeds in sorted(by_seed([r for r in rows if r["widths"]]).items()):
        chosen = [c for c in (select(v) for v in seeds.values()) if c is not None]
        if chosen:
            names, bases = chosen[0]["group_names"], chosen[0]["base_widths"]
            patterns[f"{label} ({target})"] = [c["widths"] for c in chosen]
    header = ("layer", "base", *patterns)
    table = []
    for i, name in enumerate(names):
        line = [name, str(bases[i])]
        for widths in patterns.values():
            mean, std = mean_std([w[i] for w in widths])
            line.append(f"{mean:.1f} ± {std:.1f}")
        table.append(tuple(line))
    return header, table


def comparison(rows: list[dict[str, Any]]) -> list[ComparisonRow]:
    """Group by (label, cost target), pick one trial per seed, then average over seeds.

    A transfer study's proxy and transferred trials are left to its transfer table: here only the target's
    baselines (and never the training of a shared artifact).
    """
    table = []
    rows = [r for r in rows if r["role"] not in NOT_COMPARED]
    for (label, target), seeds in by_seed(rows).items():
        members = [t for trials in seeds.values() for t in trials]
        chosen = [c for c in (select(v) for v in seeds.values()) if c is not None]
        cost = [spent(v)[0] for v in seeds.values()]
        test_mean, test_std = mean_std([c["final_test_acc"] for c in chosen])
        table.append(
            ComparisonRow(
                label=label,
                cost_target=target,
                seeds=len(chosen),
                test_acc_mean=test_mean,
                test_acc_std=test_std,
                val_acc_mean=mean_std([c["final_val_acc"] for c in chosen])[0],
                macs_mean=mean_std([c["macs"] for c in chosen if c["macs"] is not None])[0],
                params_mean=mean_std([c["params"] for c in chosen if c["params"] is not None])[0],
                cost_flops_mean=mean_std(cost)[0],
                trials=len(members),
                stopped=sum(t["status"] == "stopped" for t in members),
                errored=sum(t["status"] == "errored" for t in members),
            )
        )
    return sorted(table, key=lambda r: (r.cost_target, r.label))


def _si(value: float) -> str:
    if value != value:  # NaN
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


HEADER = (
    "method",
    "cost target",
    "seeds",
    "test acc (mean ± std)",
    "val acc",
    "MACs",
    "params",
    "total FLOPs",
    "trials",
)


def table_cells(row: ComparisonRow) -> tuple[str, ...]:
    """A comparison row as printable cells."""
    acc = "-" if row.seeds == 0 else f"{100 * row.test_acc_mean:.2f} ± {100 * row.test_acc_std:.2f}"
    val = "-" if row.seeds == 0 else f"{100 * row.val_acc_mean:.2f}"
    trials = f"{row.trials}" + (f" ({row.stopped} stopped)" if row.stopped else "")
    trials += f" ({row.errored} errored)" if row.errored else ""
    return (
        row.label,
        row.cost_target,
        str(row.seeds),
        acc,
        val,
        _si(row.macs_mean),
        _si(row.params_mean),
        _si(row.cost_flops_mean),
        trials,
    )


def markdown_table(rows: list[ComparisonRow]) -> str:
    """The comparison as a Markdown table."""
    return "\n".join(_md_table(HEADER, [table_cells(r) for r in rows]))


def _profiles(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[float]]]:
    names: list[str] = []
    profiles: dict[str, list[float]] = {}
    for (label, target), seeds in sorted(by_seed([r for r in rows if r["widths"]]).items()):
        chosen = [c for c in (select(v) for v in seeds.values()) if c is not None]
        if not chosen:
            continue
        names = chosen[0]["group_names"]
        ratios = [[w / b for w, b in zip(c["widths"], c["base_widths"], strict=True)] for c in chosen]
        profiles[f"{label} ({target})"] = [statistics.fmean(col) for col in zip(*ratios, strict=True)]
    return names, profiles


def report_paths(directory: Path) -> tuple[Path, Path]:
    """Where an experiment's report.md and report.html are."""
    out = Path(directory) / "report"
    return out / "report.md", out / "report.html"


def _html_table(header: Sequence[str], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{cells}</table>"


def _md_table(header: Sequence[str], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def write_report(directory: Path) -> tuple[Path, Path]:
    """Write report.md and report.html (with their figures) into the experiment directory.

    In a transfer experiment the comparison covers the target's controls, and a transfer section adds the
    accuracy-vs-overhead table and curve and the width similarity to direct optimisation.
    """
    directory = Path(directory).expanduser().resolve()
    rows = read_trials(directory / "results")
    out = directory / "report"
    transfer = any(r["role"] in (PROXY, TARGET) for r in rows)
    target_side = [r for r in rows if r["role"] not in NOT_COMPARED]
    table = comparison(target_side)
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if (
            row["role"] not in (PROXY, ARTIFACT)
            and row["status"] != "errored"
            and row["macs"]
            and row["final_test_acc"] is not None
        ):
            name = row["label"] if row["role"] in (TRIAL, None) else f"{row['label']} ({row['role']})"
            points[name].append((row["macs"], row["final_test_acc"]))
    figures = []
    if points:
        figures.append(
            ("Test accuracy vs MACs (every trial)", accuracy_cost_plot(points, out / "accuracy_vs_macs.png"))
        )
    names, profiles = _profiles(target_side)
    if profiles:
        figures.append(
            (
                "Width profile: selected widths / base per group (mean over seeds)",
                width_profile_plot(names, profiles, out / "width_profile.png"),
            )
        )
    errored = [r for r in rows if r["status"] == "errored"]
    title = directory.name
    md = [f"# {title}", "", f"{len(rows)} trials stored.", "", markdown_table(table), ""]
    page = [
        f"<h1>{html.escape(title)}</h1><p>{len(rows)} trials stored.</p>",
        _html_table(HEADER, [table_cells(r) for r in table]),
    ]
    if len({r.get("retrain") or "scratch-e" for r in target_side}) > 1:
        for caption, (header, body) in (
            (
                "Retraining: fine-tuned vs from scratch (test accuracy, mean ± std over seeds)",
                rethinking_table(target_side),
            ),
            (
                "Width pattern: selected channels per layer (mean ± std over seeds)",
                width_pattern_table(target_side),
            ),
        ):
            md += [f"## {caption}", "", *_md_table(header, body), ""]
            page += [f"<h2>{html.escape(caption)}</h2>", _html_table(header, body)]
    if transfer:
        transfer_table, transfer_figures, groups, similarity = transfer_section(rows, out)
        cells = [transfer_cells(r) for r in transfer_table]
        md += ["## Width transfer", "", *_md_table(TRANSFER_HEADER, cells), ""]
        page += ["<h2>Width transfer</h2>", _html_table(TRANSFER_HEADER, cells)]
        figures += transfer_figures
        if similarity:
            header = ("group", *similarity)
            sim_rows = [(g, *(f"{col[i]:.2f}" for col in similarity.values())) for i, g in enumerate(groups)]
            caption = (
                "Per-group agreement with direct optimisation: 1 - |transferred - direct| / max (width/base)"
            )
            md += [f"### {caption}", "", *_md_table(header, sim_rows), ""]
            page += [f"<h3>{html.escape(caption)}</h3>", _html_table(header, sim_rows)]
    md += [f"![{caption}]({path.name})\n" for caption, path in figures]
    if errored:
        md += ["## Errored trials", ""] + [f"- `{r['trial_key']}`: {r['error']}" for r in errored]
    md_path, html_path = report_paths(directory)
    out.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(md) + "\n")
    images = "".join(
        f"<figure><img src='{p.name}'><figcaption>{html.escape(c)}</figcaption></figure>" for c, p in figures
    )
    errors = "".join(
        f"<li><code>{html.escape(r['trial_key'])}</code>: {html.escape(str(r['error']))}</li>"
        for r in errored
    )
    html_path.write_text(
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:4px 8px;"
        "border-bottom:1px solid #ddd;text-align:left}img{max-width:100%}</style>"
        + "".join(page)
        + images
        + (f"<h2>Errored trials</h2><ul>{errors}</ul>" if errored else "")
    )
    return md_path, html_path
