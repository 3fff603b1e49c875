"""The experiment report, as Markdown (figures beside it) and as one self-contained HTML page (figures inline).

Sections: the header (config hash, dates, wall time), the comparison over seeds, Rethinking's tables when the
experiment retrains in several modes, the Pareto front of accuracy against MACs, width profiles, the transfer
section, the searched hyperparameters and each search's best configuration, optimisation histories, learning
curves, parallel coordinates, hyperparameter importance, every trial, and the errored trials.
"""

from __future__ import annotations

import html
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from widthtune.analysis.curves import learning_curves_plot, optimisation_history_plot
from widthtune.analysis.grouping import method_group
from widthtune.analysis.hyperparameters import best_configurations, value_text
from widthtune.analysis.importance import importance_plot, param_importance
from widthtune.analysis.overview import header_facts, state_if_readable
from widthtune.analysis.parallel import parallel_plot, slug
from widthtune.analysis.pareto import pareto_front, pareto_plot
from widthtune.analysis.plots import data_uri, width_profile_plot
from widthtune.analysis.transfer_report import TRANSFER_HEADER, transfer_cells, transfer_section
from widthtune.analysis.trial_table import (
    SEARCHED_HEADER,
    TRIAL_HEADER,
    TrialLine,
    searched_table,
    trial_lines,
)
from widthtune.analysis.units import ACCURACY_UNIT, accuracy_spread, accuracy_text
from widthtune.results.roles import ARTIFACT, NOT_COMPARED, PROXY, TARGET
from widthtune.results.selection import mean_std, select, spent
from widthtune.results.store import read_epochs, read_trials


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
        label = row["label"] or row["method"] or "-"
        if len(modes) > 1:
            label = f"{label} [{row.get('retrain') or 'scratch-e'}]"
        groups[(label, row["cost_target_label"] or "-")][row["seed"]].append(row)
    return groups


RETRAIN_COLUMNS = (("finetune", "Fine-tuned"), ("scratch-e", "Scratch-E"), ("scratch-b", "Scratch-B"))


def rethinking_table(rows: list[dict[str, Any]]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The chapter's table: per method and cost target, its parameters (the chapter compares architectures by
    them) and test accuracy under Fine-tuned / Scratch-E / Scratch-B."""
    cells: dict[tuple[str, str], dict[str, dict[int, list[dict[str, Any]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for row in rows:
        if row["role"] in NOT_COMPARED:
            continue
        key = (row["label"] or row["method"] or "-", row["cost_target_label"] or "-")
        cells[key][row.get("retrain") or "scratch-e"][row["seed"]].append(row)
    header = ("method", "cost target", "params", *(title for _, title in RETRAIN_COLUMNS))
    table = []
    for (label, target), modes in sorted(cells.items()):
        every = [row for seeds in modes.values() for trials in seeds.values() for row in trials]
        params = [row["params"] for row in every if row.get("params") is not None]
        line = [label, target, _si(mean_std(params)[0]) if params else "-"]
        for mode, _ in RETRAIN_COLUMNS:
            chosen = [c for c in (select(v) for v in modes.get(mode, {}).values()) if c is not None]
            mean, std = mean_std([c["final_test_acc"] for c in chosen if c["final_test_acc"] is not None])
            line.append("-" if not chosen else accuracy_spread(mean, std))
        table.append(tuple(line))
    return header, table


def width_pattern_table(rows: list[dict[str, Any]]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Per layer (group): the base width and each method's selected width, mean ± std over seeds."""
    patterns: dict[str, list[list[int]]] = {}
    names: list[str] = []
    bases: list[int] = []
    for (label, target), seeds in sorted(
        by_seed([r for r in rows if r["widths"] and r["base_widths"]]).items()
    ):
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
        test_mean, test_std = mean_std(
            [c["final_test_acc"] for c in chosen if c["final_test_acc"] is not None]
        )
        table.append(
            ComparisonRow(
                label=label,
                cost_target=target,
                seeds=len(chosen),
                test_acc_mean=test_mean,
                test_acc_std=test_std,
                val_acc_mean=mean_std([c["final_val_acc"] for c in chosen if c["final_val_acc"] is not None])[
                    0
                ],
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
    f"test acc {ACCURACY_UNIT} (mean ± std)",
    f"val acc {ACCURACY_UNIT}",
    "MACs",
    "params",
    "total FLOPs",
    "trials",
)


def table_cells(row: ComparisonRow) -> tuple[str, ...]:
    """A comparison row as printable cells."""
    acc = "-" if row.seeds == 0 else accuracy_spread(row.test_acc_mean, row.test_acc_std)
    val = "-" if row.seeds == 0 else accuracy_text(row.val_acc_mean)
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
    for (label, target), seeds in sorted(
        by_seed([r for r in rows if r["widths"] and r["base_widths"]]).items()
    ):
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


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]


def _html_table(header: Sequence[str], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{cells}</table>"


class _Page:
    """The report as it is written: the same content as Markdown lines and as HTML fragments."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []
        self.contents: list[tuple[str, str]] = []

    def heading(self, text: str, level: int = 2) -> None:
        anchor = slug(text).lower()
        if level == 2:
            self.contents.append((anchor, text))
        self.md += ["#" * level + " " + text, ""]
        self.html.append(f"<h{level} id='{anchor}'>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: Sequence[str], rows: list[tuple[str, ...]]) -> None:
        self.md += [*_md_table(header, rows), ""]
        self.html.append(_html_table(header, rows))

    def figure(self, caption: str, path: Path) -> None:
        self.md += [f"![{caption}]({path.name})", ""]
        self.html.append(
            f"<figure><img src='{data_uri(path)}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def raw(self, markdown: list[str], fragment: str) -> None:
        self.md += markdown
        self.html.append(fragment)


STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:0 12px}"
    "td,th{padding:3px 7px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
    "table{border-collapse:collapse;margin:8px 0 16px}img{max-width:100%}"
    "table.trials td{font-size:12px}td.widths{font-family:monospace;font-size:11px}"
    "figure{margin:12px 0}figcaption{font-size:13px;color:#444}dl.facts dt{float:left;width:230px;color:#555}"
    "dl.facts dd{margin-left:240px}code{font-size:11px}"
)


def _trial_table(page: _Page, lines: list[TrialLine]) -> None:
    """The per-trial table: widths' group names on hover, the MLflow run linked when it is on a server."""
    md_rows = []
    body = []
    for line in lines:
        run = line.run_id or "-"
        md_run = f"[{run}]({line.run_url})" if line.run_url else (f"`{run}`" if line.run_id else "-")
        md_rows.append((*line.cells[:-1], md_run))
        cells = [f"<td>{html.escape(c)}</td>" for c in line.cells[:-1]]
        cells[4] = (
            f"<td class='widths' title='{html.escape(line.widths_title)}'>{html.escape(line.cells[4])}</td>"
        )
        if line.run_url:
            cells.append(f"<td><a href='{html.escape(line.run_url)}'>{html.escape(run)}</a></td>")
        else:
            cells.append(f"<td><code>{html.escape(run)}</code></td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in TRIAL_HEADER)
    page.raw(
        [*_md_table(TRIAL_HEADER, md_rows), ""],
        f"<table class='trials'><tr>{head}</tr>{''.join(body)}</table>",
    )


def _rethinking(page: _Page, target_side: list[dict[str, Any]]) -> None:
    for caption, (header, body) in (
        (
            f"Retraining: fine-tuned vs from scratch (test accuracy {ACCURACY_UNIT}, mean ± std over seeds)",
            rethinking_table(target_side),
        ),
        (
            "Width pattern: selected channels per layer (mean ± std over seeds)",
            width_pattern_table(target_side),
        ),
    ):
        page.heading(caption)
        page.table(header, body)


def _transfer(page: _Page, rows: list[dict[str, Any]], out: Path) -> None:
    transfer_table, transfer_figures, groups, similarity = transfer_section(rows, out)
    page.heading("Width transfer")
    page.table(TRANSFER_HEADER, [transfer_cells(r) for r in transfer_table])
    if similarity:
        header = ("group", *similarity)
        sim_rows = [(g, *(f"{col[i]:.2f}" for col in similarity.values())) for i, g in enumerate(groups)]
        page.heading(
            "Per-group agreement with direct optimisation: 1 - |transferred - direct| / max (width/base)", 3
        )
        page.table(header, sim_rows)
    for caption, path in transfer_figures:
        page.figure(caption, path)


def _pareto(page: _Page, rows: list[dict[str, Any]], out: Path) -> None:
    front = pareto_front(rows)
    if not front.candidates:
        return
    page.heading("Pareto front: accuracy against MACs")
    page.paragraph(
        f"Every completed and stopped trial at every cost target ({len(front.candidates)} trials; errored "
        f"trials, proxies and shared artifacts left out), {front.metric_name} in {ACCURACY_UNIT}. Circled and "
        "joined: the trials no other trial matches or beats on both MACs and accuracy. Triangles: trials a "
        "scheduler stopped early."
    )
    page.figure(
        f"{front.metric_name} vs MACs, Pareto front", pareto_plot(front, out / "accuracy_vs_macs.png")
    )
    page.table(
        ("trial", "method", "status", "cost target", "MACs", f"{front.metric_name} {ACCURACY_UNIT}"),
        [
            (
                r["trial_key"],
                method_group(r),
                r["status"],
                r["cost_target_label"] or "-",
                _si(r["macs"]),
                accuracy_text(r[front.metric]),
            )
            for r in front.front
        ],
    )


def _search(page: _Page, rows: list[dict[str, Any]], epochs: list[dict[str, Any]], out: Path) -> None:
    searched = searched_table(rows)
    page.heading("Searched hyperparameters")
    if not searched:
        page.paragraph("No study varied a hyperparameter: every study trained fixed settings.")
    else:
        page.paragraph("The config keys whose values differ between the trials of one study.")
        page.table(SEARCHED_HEADER, searched)
        best = best_configurations(rows)
        page.heading("Best configuration of each search")
        page.paragraph(
            "The trial each study hands in (best final validation accuracy), and its searched values."
        )
        page.table(
            (
                "study",
                "method",
                "trials",
                "selected trial",
                f"val acc {ACCURACY_UNIT}",
                f"test acc {ACCURACY_UNIT}",
                "values",
            ),
            [
                (
                    b.study,
                    b.group,
                    str(b.trials),
                    b.trial_key,
                    accuracy_text(b.val_acc),
                    accuracy_text(b.test_acc),
                    ", ".join(f"{k}={value_text(v)}" for k, v in b.values.items()),
                )
                for b in best
            ],
        )
    history = optimisation_history_plot(rows, out / "optimisation_history.png")
    if history is not None:
        page.heading("Optimisation history")
        page.figure("Best validation accuracy so far against trials, per study (dots: each trial)", history)
    curves = learning_curves_plot(rows, epochs, out / "learning_curves.png")
    if curves is not None:
        page.heading("Learning curves")
        page.figure("Validation accuracy per epoch, one line per trial, a panel per method", curves)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["role"] != ARTIFACT:
            groups.setdefault(method_group(row), []).append(row)
    parallel = [
        (group, parallel_plot(trials, group, out / f"parallel_{slug(group)}.png"))
        for group, trials in sorted(groups.items())
    ]
    if any(path is not None for _, path in parallel):
        page.heading("Parallel coordinates")
        page.paragraph(
            "Each searched hyperparameter and each per-group width that varies, each axis scaled to its own "
            "range (labelled at its ends), one line per trial coloured by validation accuracy."
        )
        for group, path in parallel:
            if path is not None:
                page.figure(f"{group}: hyperparameters and widths per trial", path)
    found = [param_importance(group, trials) for group, trials in sorted(groups.items())]
    page.heading("Hyperparameter importance")
    page.paragraph(
        "Optuna's fANOVA evaluator (mean decrease impurity where fANOVA fails) on each method's completed "
        "trials, for final validation accuracy; the searched hyperparameters only."
    )
    ranked = [(f.group, f.evaluator, str(f.trials), k, f"{v:.3f}") for f in found for k, v in f.importances]
    if ranked:
        page.table(("method", "evaluator", "completed trials", "hyperparameter", "importance"), ranked)
    figure = importance_plot(found, out / "importance.png")
    if figure is not None:
        page.figure("Hyperparameter importance for validation accuracy", figure)
    skipped = [f for f in found if f.skipped]
    if skipped:
        page.raw(
            [*(f"- {f.group}: not computed, {f.skipped}" for f in skipped), ""],
            "<ul>"
            + "".join(
                f"<li>{html.escape(f.group)}: not computed, {html.escape(f.skipped)}</li>" for f in skipped
            )
            + "</ul>",
        )


def write_report(
    directory: Path, out: Path | None = None, rows: list[dict[str, Any]] | None = None
) -> tuple[Path, Path]:
    """Write report.md and report.html (with their figures) into the experiment directory (or `out`).

    In a transfer experiment the comparison covers the target's controls, and a transfer section adds the
    accuracy-vs-overhead table and curve and the width similarity to direct optimisation. `rows`: the stored
    trials when the caller has just read them.
    """
    directory = Path(directory).expanduser().resolve()
    rows = read_trials(directory / "results") if rows is None else rows
    epochs = read_epochs(directory / "results")
    state = state_if_readable(directory)
    out = Path(out).expanduser().resolve() if out is not None else directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    target_side = [r for r in rows if r["role"] not in NOT_COMPARED]
    title = directory.name
    page = _Page()
    facts = header_facts(state, rows, time.time())
    page.raw(
        [f"# {title}", "", *(f"- {name}: {value}" for name, value in facts), ""],
        f"<h1>{html.escape(title)}</h1><dl class='facts'>"
        + "".join(f"<dt>{html.escape(n)}</dt><dd>{html.escape(v)}</dd>" for n, v in facts)
        + "</dl>",
    )
    page.heading("Comparison")
    page.paragraph(
        f"{len(rows)} trials stored. Per method and cost target, the trial each seed hands in (best final "
        f"validation accuracy); accuracy in {ACCURACY_UNIT}, mean ± std over seeds."
    )
    page.table(HEADER, [table_cells(r) for r in comparison(target_side)])
    if len({r.get("retrain") or "scratch-e" for r in target_side}) > 1:
        _rethinking(page, target_side)
    _pareto(page, rows, out)
    names, profiles = _profiles(target_side)
    if profiles:
        page.heading("Width profiles")
        page.figure(
            "Width profile: selected widths / base per group (mean over seeds)",
            width_profile_plot(names, profiles, out / "width_profile.png"),
        )
    if any(r["role"] in (PROXY, TARGET) for r in rows):
        _transfer(page, rows, out)
    _search(page, rows, epochs, out)
    page.heading("Trials")
    page.paragraph(
        "Every stored trial, by study in the order trials finished; epochs trained / planned; widths per channel "
        "group in model order (the group names show on hover in the HTML report)."
    )
    _trial_table(page, trial_lines(rows, state))
    errored = [r for r in rows if r["status"] == "errored"]
    if errored:
        page.heading("Errored trials")
        page.raw(
            [*(f"- `{r['trial_key']}`: {r['error']}" for r in errored), ""],
            "<ul>"
            + "".join(
                f"<li><code>{html.escape(r['trial_key'])}</code>: {html.escape(str(r['error']))}</li>"
                for r in errored
            )
            + "</ul>",
        )
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(page.md) + "\n")
    contents = "".join(f"<li><a href='#{a}'>{html.escape(t)}</a></li>" for a, t in page.contents)
    body = page.html[0] + f"<nav><ul>{contents}</ul></nav>" + "".join(page.html[1:])
    html_path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )
    return md_path, html_path
