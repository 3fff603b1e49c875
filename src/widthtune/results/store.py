"""The Parquet result store: a row per trial, per trial-epoch and per shared artifact, written by the driver.

Each trial is its own file under `trials/` and `epochs/`, named by its key; writing it again replaces it, so a
resumed experiment can never hold a trial twice. Read the directory as one dataset.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

TRIAL_SCHEMA = pa.schema(
    [
        ("trial_key", pa.string()),
        ("trial_id", pa.string()),
        ("experiment", pa.string()),
        ("study", pa.string()),
        ("method", pa.string()),
        ("label", pa.string()),
        ("role", pa.string()),
        ("config_hash", pa.string()),
        ("model", pa.string()),
        ("dataset", pa.string()),
        ("seed", pa.int64()),
        ("cost_target", pa.float64()),
        ("cost_convention", pa.string()),
        ("cost_target_label", pa.string()),
        ("group_names", pa.list_(pa.string())),
        ("widths", pa.list_(pa.int64())),
        ("base_widths", pa.list_(pa.int64())),
        ("multiplier", pa.float64()),
        ("macs", pa.float64()),
        ("flops", pa.float64()),
        ("params", pa.float64()),
        ("epochs_planned", pa.int64()),
        ("epochs_trained", pa.int64()),
        ("final_val_acc", pa.float64()),
        ("final_val_loss", pa.float64()),
        ("final_test_acc", pa.float64()),
        ("final_test_loss", pa.float64()),
        ("best_val_acc", pa.float64()),
        ("best_val_epoch", pa.int64()),
        ("test_acc_at_best_val", pa.float64()),
        ("search_flops", pa.float64()),
        ("search_seconds", pa.float64()),
        ("train_flops", pa.float64()),
        ("wall_seconds", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("retrain", pa.string()),
        ("projection", pa.string()),
        ("extrapolation", pa.string()),
        ("source_trial_key", pa.string()),
        ("source_run_id", pa.string()),
        ("overhead_ratio", pa.float64()),
        ("overhead_flops", pa.float64()),
        ("overhead_seconds", pa.float64()),
        ("checkpoint", pa.string()),
        ("params_json", pa.string()),
        ("mlflow_run_id", pa.string()),
        ("finished_at", pa.float64()),
    ]
)

EPOCH_SCHEMA = pa.schema(
    [
        ("trial_key", pa.string()),
        ("study", pa.string()),
        ("label", pa.string()),
        ("seed", pa.int64()),
        ("epoch", pa.int64()),
        ("train_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("val_loss", pa.float64()),
        ("val_acc", pa.float64()),
        ("test_loss", pa.float64()),
        ("test_acc", pa.float64()),
        ("lr", pa.float64()),
        ("seconds", pa.float64()),
        ("images_per_second", pa.float64()),
        ("images_seen", pa.int64()),
        ("train_flops", pa.float64()),
    ]
)


ARTIFACT_SCHEMA = pa.schema(
    [
        ("artifact_key", pa.string()),
        ("kind", pa.string()),
        ("seed", pa.int64()),
        ("recipe_json", pa.string()),
        ("status", pa.string()),
        ("path", pa.string()),
        ("value_json", pa.string()),
        ("reason", pa.string()),
        ("wall_seconds", pa.float64()),
        ("trial_key", pa.string()),
        ("mlflow_run_id", pa.string()),
        ("finished_at", pa.float64()),
    ]
)


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".parquet.partial")
    pq.write_table(table, partial)
    os.replace(partial, path)  # atomic: a reader never sees half a file, a rerun replaces the old one


def _row(schema: pa.Schema, values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: values.get(name) for name in schema.names}


def write_trial(root: Path, row: Mapping[str, Any], epochs: list[Mapping[str, Any]]) -> None:
    """Store (or replace) one finished trial and its per-epoch history."""
    key = str(row["trial_key"])
    _write(
        pa.Table.from_pylist([_row(TRIAL_SCHEMA, row)], schema=TRIAL_SCHEMA),
        root / "trials" / f"{key}.parquet",
    )
    rows = [_row(EPOCH_SCHEMA, {**e, "trial_key": key}) for e in epochs]
    _write(pa.Table.from_pylist(rows, schema=EPOCH_SCHEMA), root / "epochs" / f"{key}.parquet")


def _table(folder: Path, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table | None:
    """The folder's files as one table (a column a file lacks, from an older widthtune, reads as null)."""
    files = sorted(str(f) for f in folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return None
    return ds.dataset(files, schema=schema, format="parquet").to_table(columns=columns)


def _read(folder: Path, schema: pa.Schema) -> list[dict[str, Any]]:
    table = _table(folder, schema)
    return [] if table is None else table.to_pylist()


def results_root(path: str | Path) -> Path:
    """The store's folder: `path` itself, or its `results/` when `path` is an experiment folder."""
    path = Path(path).expanduser()
    return path / "results" if (path / "results").is_dir() else path


def read_trial(root: str | Path, key: str) -> dict[str, Any] | None:
    """One stored trial's row, or None."""
    path = results_root(root) / "trials" / f"{key}.parquet"
    return pq.read_table(path, schema=TRIAL_SCHEMA).to_pylist()[0] if path.is_file() else None


def read_trials(root: str | Path) -> list[dict[str, Any]]:
    """Every stored trial row; `root` is the experiment folder or its `results/` (a str or a Path)."""
    return _read(results_root(root) / "trials", TRIAL_SCHEMA)


def stored_studies(root: str | Path) -> Counter[str]:
    """How many trials each study has stored (one column read: cheap after a sweep of many trials)."""
    table = _table(results_root(root) / "trials", TRIAL_SCHEMA, columns=["study"])
    return Counter() if table is None else Counter(table.column("study").to_pylist())


def write_artifact(root: Path, row: Mapping[str, Any]) -> None:
    """Store (or replace) one shared artifact's record."""
    _write(
        pa.Table.from_pylist([_row(ARTIFACT_SCHEMA, row)], schema=ARTIFACT_SCHEMA),
        root / "artifacts" / f"{row['artifact_key']}.parquet",
    )


def read_artifacts(root: str | Path) -> list[dict[str, Any]]:
    """Every stored shared artifact's record (`root`: the experiment folder or its `results/`)."""
    return _read(results_root(root) / "artifacts", ARTIFACT_SCHEMA)


def read_epochs(root: str | Path) -> list[dict[str, Any]]:
    """Every stored trial-epoch row (`root`: the experiment folder or its `results/`)."""
    return _read(results_root(root) / "epochs", EPOCH_SCHEMA)


class EpochJournal:
    """Per-trial epoch results appended as they arrive (JSON lines), so a killed driver loses none of them."""

    def __init__(self, root: Path) -> None:
        self.root = root / "journal"

    def append(self, key: str, record: Mapping[str, Any]) -> None:
        """Add one epoch's result."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{key}.jsonl", "a") as handle:
            handle.write(json.dumps(record, default=float) + "\n")

    def read(self, key: str) -> list[dict[str, Any]]:
        """The trial's epochs, one per epoch number (the latest report wins, sorted by epoch)."""
        path = self.root / f"{key}.jsonl"
        if not path.is_file():
            return []
        by_epoch: dict[int, dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a killed driver
            by_epoch[int(record.get("epoch", 0))] = record
        return [by_epoch[e] for e in sorted(by_epoch)]
