"""Backfill MLflow from the Parquet store: every stored trial gets its run, params, epochs and outcome.

Used after the tracking server was down during a run (the store has everything); running it again creates
nothing new, because runs are found by their trial key and an epoch already logged is never logged twice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from widthtune.analysis.profile_svg import PROFILE_SVG
from widthtune.models.artifact import WIDTHS_FILE
from widthtune.platform.recorder import epoch_values, finish_run, logged_params, trial_tags
from widthtune.platform.tracking import EpochMetrics, Tracking, TrialRuns
from widthtune.results.store import read_epochs, read_trials, write_trial


@dataclass(frozen=True)
class Synced:
    """What a sync did: trial runs created in MLflow, and trials that already had one."""

    created: int
    found: int


def sync_tracking(directory: Path, tracking: Tracking, config_hash: str) -> Synced:
    """Make MLflow hold every trial the store holds (idempotent)."""
    results = Path(directory) / "results"
    runs = TrialRuns(tracking)
    epochs_by_trial: dict[str, list[dict]] = {}
    for epoch in read_epochs(results):
        epochs_by_trial.setdefault(epoch["trial_key"], []).append(epoch)
    created = found = 0
    for row in read_trials(results):
        key = row["trial_key"]
        config = json.loads(row["params_json"] or "{}")
        before = runs.created
        run_id = runs.run_for(
            key,
            f"{row['study']}/{row['trial_id']}",
            trial_tags(config, row["study"], row["role"], config_hash),
            logged_params(config),
        )
        created, found = (created + 1, found) if runs.created > before else (created, found + 1)
        epochs = sorted(epochs_by_trial.get(key, []), key=lambda e: e["epoch"])
        stamp = int(time.time() * 1000)
        points = [EpochMetrics(int(e["epoch"]), epoch_values(e), stamp) for e in epochs]
        folder = Path(directory) / "trials" / key
        artifacts = [p for p in (folder / WIDTHS_FILE, folder / PROFILE_SVG) if p.is_file()]
        finish_run(runs, row, artifacts, points)  # the missing epochs ride with the outcome
        if row["mlflow_run_id"] != run_id:
            write_trial(results, {**row, "mlflow_run_id": run_id}, epochs)
    return Synced(created, found)
