"""A trained trial's model: its newest checkpoint, widths and spec, from a trial folder or an experiment's best trial.

Two folders hold a trial: Tune's (`EXPERIMENT/tune/STUDY/trial_ID`, with `checkpoint_*/trial_state.pt` and
the `widths.json` its search wrote) and the recorder's (`EXPERIMENT/trials/KEY`, with `widths.json`; its
checkpoint is the one the Parquet row names). Checkpoints load with `weights_only=True`: plain tensors and data.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from widthtune.models.artifact import WIDTHS_FILE, load_widths
from widthtune.results.files import EXPERIMENT_FILE
from widthtune.results.store import read_trials
from widthtune.trainables.trial import CHECKPOINT_FILE, latest_checkpoint

# the experiment metric's column in the store (the final epoch's value: what the exported weights score)
METRIC_COLUMNS = {"val_acc": ("final_val_acc", max), "val_loss": ("final_val_loss", min)}


class TrainedTrialError(ValueError):
    """A folder holds no trained trial that can be exported; the message says what is missing."""


@dataclass(frozen=True)
class TrainedTrial:
    """Where a trained trial's weights are, and the model they belong to."""

    name: str
    spec: str
    widths: Mapping[str, int]
    checkpoint: Path
    score: Mapping[str, float] = field(default_factory=dict)


def _stored_row(experiment: Path, key: str) -> dict[str, Any] | None:
    rows = [r for r in read_trials(experiment / "results") if r["trial_key"] == key]
    return rows[0] if rows else None


def _row_checkpoint(experiment: Path, row: Mapping[str, Any]) -> Path | None:
    """The checkpoint a stored row names, or the newest in its Tune folder if the experiment moved."""
    if row.get("checkpoint"):
        named = Path(str(row["checkpoint"])) / CHECKPOINT_FILE
        if named.is_file():
            return named
    folders = experiment.glob(f"tune/*/trial_{row.get('trial_id')}") if row.get("trial_id") else []
    found = [c for c in map(latest_checkpoint, folders) if c is not None]
    return found[0] if found else None


def trial_from_folder(folder: str | Path) -> TrainedTrial:
    """The trained trial in a Tune trial folder or an experiment's `trials/KEY` folder."""
    folder = Path(folder).expanduser().resolve()
    if (folder / EXPERIMENT_FILE).is_file():
        raise TrainedTrialError(
            f"{str(folder)!r} is an experiment folder: add --best for its best trial, or name one trial's folder "
            "(tune/STUDY/trial_ID or trials/KEY)"
        )
    if not (folder / WIDTHS_FILE).is_file():
        raise TrainedTrialError(
            f"{str(folder)!r} is not a trial folder: it has no {WIDTHS_FILE} "
            "(a trial folder is EXPERIMENT/tune/STUDY/trial_ID or EXPERIMENT/trials/KEY)"
        )
    checkpoint = latest_checkpoint(folder)
    experiment = folder.parent.parent
    if checkpoint is None and folder.parent.name == "trials" and (experiment / EXPERIMENT_FILE).is_file():
        row = _stored_row(experiment, folder.name)
        checkpoint = _row_checkpoint(experiment, row) if row else None
    if checkpoint is None:
        raise TrainedTrialError(
            f"trial folder {str(folder)!r} has no checkpoint_*/{CHECKPOINT_FILE}: the trial trained no epoch, or its "
            "checkpoints were removed"
        )
    artifact = load_widths(folder / WIDTHS_FILE)
    return TrainedTrial(folder.name, str(artifact.spec), artifact.widths.as_dict(), checkpoint)


def experiment_metric(experiment: Path) -> str:
    """The metric an experiment ranks trials by (its config's `metric`)."""
    path = experiment / EXPERIMENT_FILE
    try:
        metric = json.loads(path.read_text())["config"].get("metric", "val_acc")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise TrainedTrialError(
            f"{str(path)!r} is missing or damaged: it does not say the experiment's metric"
        ) from None
    if metric not in METRIC_COLUMNS:
        raise TrainedTrialError(f"{str(path)!r}: metric {metric!r} is not one of {', '.join(METRIC_COLUMNS)}")
    return metric


def best_trial(experiment: str | Path) -> TrainedTrial:
    """The completed trial with the best final value of the experiment's metric, with its checkpoint."""
    experiment = Path(experiment).expanduser().resolve()
    if not (experiment / EXPERIMENT_FILE).is_file():
        raise TrainedTrialError(f"{str(experiment)!r} is not an experiment folder (no {EXPERIMENT_FILE})")
    metric = experiment_metric(experiment)
    column, better = METRIC_COLUMNS[metric]
    rows = [
        r
        for r in read_trials(experiment / "results")
        if r["status"] == "completed" and r[column] is not None and r["widths"]
    ]
    if not rows:
        raise TrainedTrialError(
            f"experiment {str(experiment)!r} has no completed trial in results/trials to export"
        )
    value = better(r[column] for r in rows)
    tied = [r for r in rows if r[column] == value]
    row = min(tied, key=lambda r: (r["macs"] or 0.0, r["trial_key"]))  # the cheapest of equals
    checkpoint = _row_checkpoint(experiment, row)
    if checkpoint is None:
        raise TrainedTrialError(
            f"best trial {row['trial_key']} ({metric} {value:.4g}): its checkpoint {row['checkpoint']!r} "
            "is not on this machine"
        )
    widths = dict(zip(row["group_names"], row["widths"], strict=True))
    return TrainedTrial(row["trial_key"], str(row["model"]), widths, checkpoint, {metric: float(value)})


def trained_state(trial: TrainedTrial) -> tuple[dict[str, torch.Tensor], int]:
    """The trial's trained weights and the epoch they were saved after, checked against its widths."""
    try:
        saved = torch.load(trial.checkpoint, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TrainedTrialError(
            f"checkpoint {str(trial.checkpoint)!r} cannot be read as plain tensors and data: {first}"
        ) from None
    train = saved.get("train") if isinstance(saved, dict) else None
    if not isinstance(train, dict) or not isinstance(train.get("model"), dict):
        raise TrainedTrialError(
            f"checkpoint {str(trial.checkpoint)!r} holds no trained model ('train.model')"
        )
    found = saved.get("found")
    saved_widths = found.get("widths") if isinstance(found, dict) else None
    if saved_widths is not None and dict(saved_widths) != dict(trial.widths):
        raise TrainedTrialError(
            f"checkpoint {str(trial.checkpoint)!r} was trained at other widths than {trial.name}'s {WIDTHS_FILE}"
        )
    return train["model"], int(train.get("epoch", 0))
