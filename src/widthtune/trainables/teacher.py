"""Distillation teachers: a trained model read from a trial's checkpoint, on disk or among this experiment's trials.

A teacher is named by a checkpoint file (a trial's `trial_state.pt`, or a plain state dict) or a folder holding
one (a Tune trial folder: its latest `checkpoint_*/trial_state.pt`, or a trained-model artifact's `model.pt`);
its model and widths come from the `widths.json` beside it or in a folder above, unless given. Checkpoints hold
plain tensors and are read with `weights_only=True`: a crafted file cannot run code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from widthtune.models.artifact import WIDTHS_FILE, load_widths
from widthtune.models.registry import materialize
from widthtune.trainables.trial import CHECKPOINT_FILE, latest_checkpoint


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint a teacher path names (the newest one in a trial folder)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if (path / CHECKPOINT_FILE).is_file():
        return path / CHECKPOINT_FILE
    found = latest_checkpoint(path)
    if found is None:
        raise ValueError(
            f"distill.teacher: no {CHECKPOINT_FILE} in {str(path)!r} or its checkpoint_* folders"
        )
    return found


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
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = saved["train"]["model"] if isinstance(saved, dict) and "train" in saved else saved
    if model is None or widths is None:
        artifact = load_widths(_widths_file(checkpoint))
        model, widths = str(artifact.spec), artifact.widths
    teacher = materialize(model, widths)
    teacher.load_state_dict(state)
    return teacher.eval()
