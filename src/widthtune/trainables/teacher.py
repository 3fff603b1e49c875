"""Distillation teachers: a trained model read from a trial's checkpoint, on disk or among this experiment's trials.

A teacher is named by a checkpoint file (a trial's `trial_state.pt`, or a plain state dict) or a folder holding
one (a Tune trial folder: its latest `checkpoint_*/trial_state.pt`); its model and widths come from the
`widths.json` beside it or in a folder above, unless given. Inside an experiment, a teacher named by an earlier
method's label is that label's best completed trial (best final validation accuracy).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from widthtune.analysis.selection import select
from widthtune.models.artifact import load_widths
from widthtune.models.registry import materialize

CHECKPOINT_FILE = "trial_state.pt"
WIDTHS_FILE = "widths.json"


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint a teacher path names (the newest one in a trial folder)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if (path / CHECKPOINT_FILE).is_file():
        return path / CHECKPOINT_FILE
    found = sorted(path.glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
    if not found:
        raise ValueError(
            f"distill.teacher: no {CHECKPOINT_FILE} in {str(path)!r} or its checkpoint_* folders"
        )
    return found[-1]


def _widths_file(checkpoint: Path) -> Path:
    for folder in list(checkpoint.parents)[:3]:
        if (folder / WIDTHS_FILE).is_file():
            return folder / WIDTHS_FILE
    raise ValueError(
        f"distill.teacher: no {WIDTHS_FILE} beside {str(checkpoint)!r} to say which model it holds"
    )


def load_teacher(
    path: str | Path, model: str | None = None, widths: Mapping[str, int] | None = None
) -> nn.Module:
    """The trained teacher in eval mode."""
    checkpoint = checkpoint_file(path)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = saved["train"]["model"] if isinstance(saved, dict) and "train" in saved else saved
    if model is None or widths is None:
        artifact = load_widths(_widths_file(checkpoint))
        model, widths = str(artifact.spec), artifact.widths
    teacher = materialize(model, widths)
    teacher.load_state_dict(state)
    return teacher.eval()


def teacher_from_trials(label: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The flat config keys that point a trial at the best completed trial of method `label`."""
    chosen = select([r for r in rows if r["label"] == label and r["checkpoint"]])
    if chosen is None:
        raise ValueError(
            f"distill.teacher: method {label!r} has no completed trial with a checkpoint to teach from"
        )
    return {
        "distill.teacher": chosen["checkpoint"],
        "distill.teacher_trial": chosen["trial_key"],
        "distill.teacher_model": chosen["model"],
        "distill.teacher_widths": dict(zip(chosen["group_names"], chosen["widths"], strict=True)),
    }
