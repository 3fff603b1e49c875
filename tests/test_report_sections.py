"""The report on a real results store: every section, inline figures, MLflow links, the Pareto front, importance."""

import base64
import json
import random
import re
import time

import pytest

from widthtune.analysis.curves import best_so_far
from widthtune.analysis.hyperparameters import searched_keys
from widthtune.analysis.importance import distribution
from widthtune.analysis.pareto import non_dominated
from widthtune.analysis.report import write_report
from widthtune.results.files import EXPERIMENT_FILE
from widthtune.results.store import write_trial

GROUPS = ["stage1.stream", "stage2.stream", "stage3.stream"]
BASE = [16, 32, 64]
URI = "http://127.0.0.1:5000"
SECTIONS = (
    "Comparison",
    "Pareto front: accuracy against MACs",
    "Width profiles",
    "Searched hyperparameters",
    "Best configuration of each search",
    "Optimisation history",
    "Learning curves",
    "Parallel coordinates",
    "Hyperparameter importance",
    "Trials",
    "Errored trials",
)


def _trial(key, study, label, index, *, lr, decay, ratio, status="completed", epochs=4, trained=4):
    """One stored trial whose accuracy is set by its learning rate alone (decay is noise)."""
    jitter = random.Random(index).uniform(-0.002, 0.002)
    val = None if status == "errored" else 0.55 + 2.0 * lr + jitter
    widths = [max(4, int(b * ratio * (1 + 0.1 * ((index + i) % 3)))) for i, b in enumerate(BASE)]
    macs = 1e6 * sum(w * w for w in widths) / sum(b * b for b in BASE)
    row = {
        "trial_key": key,
        "trial_id": key[-5:],
        "experiment": "exp",
        "study": study,
        "method": label,
        "label": label,
        "role": "trial",
        "config_hash": "abc123def456",
        "model": "resnet_cifar:depth=8",
        "dataset": "digits",
        "seed": 0,
        "cost_target": 1e6 * ratio,
        "cost_convention": "macs",
        "cost_target_label": f"macs x{ratio}",
        "group_names": GROUPS,
        "widths": widths,
        "base_widths": BASE,
        "macs": macs,
        "params": 10 * macs,
        "epochs_planned": epochs,
        "epochs_trained": trained,
        "final_val_acc": val,
        "final_test_acc": None if val is None else val - 0.01 + 0.5 * jitter,
        "train_flops": 3e9,
        "search_flops": 0.0,
        "wall_seconds": 2.0 + index,
        "status": status,
        "error": "NonFiniteLossError: loss is nan at epoch 1" if status == "errored" else None,
        "params_json": json.dumps(
            {
                "experiment": "exp",
                "study": study,
                "label": label,
                "method": label,
                "seed": 0,
                "cost_target.ratio": ratio,
                "train.lr": lr,
                "train.weight_decay": decay,
                "train.epochs": epochs,
            }
        ),
        "mlflow_run_id": f"run{index:029d}",
        "finished_at": 1_800_000_000.0 + 10 * index,
    }
    curve = [
        {"epoch": e, "val_acc": (val or 0.1) * e / trained, "test_acc": None, "train_loss": 1.0 / e}
        for e in range(1, trained + 1)
    ]
    return row, curve


def _store(directory, with_state=True):
    rng = random.Random(0)
    rows = []
    for i in range(12):
        status, trained = ("stopped", 2) if i in (3, 7) else ("completed", 4)
        rows.append(
            _trial(
                f"direct-s0__t{i:02d}",
                "direct-s0",
                "direct",
                i,
                lr=rng.uniform(0.01, 0.2),
                decay=rng.uniform(1e-5, 1e-3),
                ratio=0.5,
                status=status,
                trained=trained,
            )
        )
    rows.append(
        _trial(
            "direct-s0__t12",
            "direct-s0",
            "direct",
            12,
            lr=0.1,
            decay=1e-4,
            ratio=0.5,
            status="errored",
            trained=1,
        )
    )
    for j, ratio in enumerate((0.25, 0.5)):
        rows.append(_trial(f"uniform__u{j}", "uniform", "uniform", 20 + j, lr=0.05, decay=1e-4, ratio=ratio))
    for row, epochs in rows:
        write_trial(directory / "results", row, epochs)
    if with_state:
        state = {
            "name": "exp",
            "kind": "sweep",
            "created": 1_799_999_000.0,
            "config_hash": "abc123def456",
            "tracking": {"uri": URI, "experiment_id": "3", "parent_run_id": "p" * 32},
        }
        (directory / EXPERIMENT_FILE).write_text(json.dumps(state))
    return [r for r, _ in rows]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    directory = tmp_path_factory.mktemp("report") / "exp"
    rows = _store(directory)
    md, page = write_report(directory)
    return rows, md.read_text(), page.read_text(), directory


def _section(md, title):
    """The Markdown between a level-2 heading and the next one."""
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _table(text):
    """A Markdown table's rows as cell lists (header first)."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


def test_every_section_is_in_both_formats(report):
    _, md, page, _ = report
    for title in SECTIONS:
        assert f"\n## {title}\n" in md, title
        assert f">{title}</h2>" in page, title


def test_html_is_self_contained_with_inline_png_figures(report):
    _, _, page, directory = report
    sources = re.findall(r"<img src='([^']*)'", page)
    assert len(sources) >= 6
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<link" not in page and "<script" not in page and "url(" not in page
    # every href is an in-page anchor or an MLflow run
    assert all(
        h.startswith(("#", f"{URI}/#/experiments/3/runs/")) for h in re.findall(r"href='([^']*)'", page)
    )
    assert (directory / "report" / "accuracy_vs_macs.png").is_file()  # the Markdown's figures beside it


def test_header_has_hash_dates_and_wall_time(report):
    rows, md, _, _ = report
    head = md.split("\n## ", 1)[0]
    assert "config hash: abc123def456" in head
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_799_999_000.0))
    assert f"experiment created: {created}" in head
    assert "report written: " in head
    wall = sum(r["wall_seconds"] for r in rows)
    assert f"wall time, summed over trials: {int(wall // 60)} min {wall % 60:.0f} s" in head
    span = max(r["finished_at"] for r in rows) - min(r["finished_at"] for r in rows)
    assert f"first to last finished trial: {int(span // 60)} min {span % 60:.0f} s" in head
    assert "trials: 15 (12 completed, 2 stopped, 1 errored)" in head


def test_trial_table_has_every_trial_with_status_params_widths_and_mlflow_link(report):
    rows, md, page, _ = report
    table = _table(_section(md, "Trials"))
    header, body = table[0], table[1:]
    assert header[:5] == ["trial", "status", "method", "hyperparameters", "widths"]
    assert len(body) == len(rows)
    by_key = {r["trial_key"]: r for r in rows}
    for cells in body:
        row = by_key[cells[0]]
        assert cells[1] == row["status"]
        assert f"train.lr={row_lr(row):.4g}" in cells[3] and "train.weight_decay=" in cells[3]
        assert "seed=" not in cells[3] and "study=" not in cells[3]
        assert cells[4] == "/".join(str(w) for w in row["widths"])
        expected = "-" if row["final_val_acc"] is None else f"{100 * row['final_val_acc']:.2f}"
        assert cells[5] == expected
        assert cells[7] == f"{row['epochs_trained']}/{row['epochs_planned']}"
        url = f"{URI}/#/experiments/3/runs/{row['mlflow_run_id']}?workflowType=machine_learning"
        assert cells[9] == f"[{row['mlflow_run_id']}]({url})"
        assert f"href='{url}'" in page
    uniform = next(c for c in body if c[0] == "uniform__u0")
    assert "cost_target.ratio=0.25" in uniform[3]


def row_lr(row):
    return json.loads(row["params_json"])["train.lr"]


def test_searched_hyperparameters_and_best_configuration(report):
    rows, md, _, _ = report
    searched = _table(_section(md, "Searched hyperparameters"))[1:]
    assert {(c[0], c[3]) for c in searched} == {
        ("direct-s0", "train.lr"),
        ("direct-s0", "train.weight_decay"),
        ("uniform", "cost_target.ratio"),
    }
    best = _table(_section(md, "Best configuration of each search"))[1:]
    chosen = max(
        (r for r in rows if r["study"] == "direct-s0" and r["status"] == "completed"),
        key=lambda r: r["final_val_acc"],
    )
    line = next(c for c in best if c[0] == "direct-s0")
    assert line[3] == chosen["trial_key"] and f"train.lr={row_lr(chosen):.4g}" in line[6]
    assert line[4] == f"{100 * chosen['final_val_acc']:.2f}"


def test_pareto_front_marks_exactly_the_non_dominated_trials(report):
    rows, md, _, _ = report
    candidates = [r for r in rows if r["status"] != "errored"]
    expected = {
        r["trial_key"]
        for r in candidates
        if not any(
            o["macs"] <= r["macs"]
            and o["final_test_acc"] >= r["final_test_acc"]
            and (o["macs"], o["final_test_acc"]) != (r["macs"], r["final_test_acc"])
            for o in candidates
        )
    }
    assert 2 <= len(expected) < len(candidates)
    marked = _table(_section(md, "Pareto front: accuracy against MACs"))
    assert marked[0][-1] == "test accuracy %"
    assert {c[0] for c in marked[1:]} == expected
    assert all(re.fullmatch(r"\d+\.\d\d", c[-1]) for c in marked[1:])


def test_importance_ranks_the_deciding_parameter_above_the_noise(report):
    _, md, _, _ = report
    section = _section(md, "Hyperparameter importance")
    ranked = [c for c in _table(section)[1:] if c[0] == "direct"]
    assert [c[3] for c in ranked] == ["train.lr", "train.weight_decay"]
    assert float(ranked[0][4]) > 3 * float(ranked[1][4])
    assert ranked[0][1] in ("fANOVA", "mean decrease impurity") and ranked[0][2] == "10"
    assert "uniform: not computed, 2 completed trials (needs 4)" in section


def test_accuracy_is_percent_with_two_decimals_in_every_table(report):
    _, md, _, _ = report
    comparison = _table(_section(md, "Comparison"))
    assert comparison[0][3] == "test acc % (mean ± std)" and comparison[0][4] == "val acc %"
    for cells in comparison[1:]:
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", cells[3]) and re.fullmatch(r"\d+\.\d\d", cells[4])
    for cells in _table(_section(md, "Trials"))[1:]:
        assert all(re.fullmatch(r"\d+\.\d\d|-", c) for c in cells[5:7])


def test_report_without_experiment_state_shows_run_ids(tmp_path):
    rows = _store(tmp_path / "bare", with_state=False)
    md, page = write_report(tmp_path / "bare")
    text = md.read_text()
    assert f"`{rows[0]['mlflow_run_id']}`" in text and "href='http" not in page.read_text()
    assert "config hash: abc123def456" in text


def test_non_dominated_points():
    points = [(1.0, 0.5), (2.0, 0.7), (2.0, 0.6), (3.0, 0.7), (0.5, 0.2), (4.0, 0.9), (1.0, 0.5)]
    assert non_dominated(points) == [0, 1, 4, 5, 6]


def test_best_so_far_and_inferred_distributions():
    assert best_so_far([0.2, 0.1, 0.5, 0.3]) == [0.2, 0.2, 0.5, 0.5]
    assert type(distribution([1, 3, 2])).__name__ == "IntDistribution"
    assert type(distribution([0.1, 2])).__name__ == "FloatDistribution"
    assert distribution(["sgd", "adam"]).choices == ("adam", "sgd")
    assert type(distribution([True, False])).__name__ == "CategoricalDistribution"


def test_identity_and_provenance_keys_are_never_searched():
    def row(study, **params):
        return {
            "study": study,
            "params_json": json.dumps(params),
            "finished_at": 0.0,
            "trial_key": str(params),
        }

    rows = [
        row(
            "t",
            seed=0,
            label="a",
            **{"transfer.source_run_id": "x", "transfer.projection": "w0.5", "m.w": {}},
        ),
        row(
            "t",
            seed=1,
            label="a",
            **{"transfer.source_run_id": "y", "transfer.projection": "w0.25", "m.w": {1: 2}},
        ),
    ]
    assert searched_keys(rows) == ["transfer.projection"]


def test_transfer_store_keeps_its_section_in_the_same_unit(tmp_path):
    def stored(key, role, label, acc, **extra):
        row, epochs = _trial(key, f"{label}-{role}", label, len(key), lr=0.05, decay=1e-4, ratio=0.5)
        row.update(role=role, final_test_acc=acc, search_flops=4e9 if role == "direct" else 0.0, **extra)
        write_trial(tmp_path / "t" / "results", row, epochs)

    stored("d0", "direct", "direct", 0.8123)
    stored("p0", "proxy", "direct", 0.5)
    point = {"projection": "w0.5-d0.5-f0.5", "extrapolation": "stack-average-block", "overhead_ratio": 0.0625}
    stored("t0", "target", "direct", 0.7981, overhead_flops=2.5e8, overhead_seconds=0.4, **point)
    stored("u0", "baseline", "uniform", 0.7502)
    md, _ = write_report(tmp_path / "t")
    section = _section(md.read_text(), "Width transfer")
    table = _table(section.split("\n### ", 1)[0])
    assert table[0][4] == "target test acc % (mean ± std)"
    assert [c[4] for c in table[1:]] == ["81.23 ± 0.00", "79.81 ± 0.00", "75.02 ± 0.00"]
    assert (tmp_path / "t" / "report" / "transfer_curve.png").is_file()
    pareto = {c[0] for c in _table(_section(md.read_text(), "Pareto front: accuracy against MACs"))[1:]}
    assert "p0" not in pareto  # a proxy's MACs are another model's
