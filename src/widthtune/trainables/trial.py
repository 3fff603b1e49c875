"""A trial's description: the flat Tune config read once into typed values (defaults come from their owners).

The flat config (`model`, `method`, `seed`, `data.*`, `train.*`, `method.*`, `cost_target.*`, `retrain.*`,
`distill.*`, `artifact.*`) is what Tune samples, stores and restores; everything downstream of the trial's
first line uses the `TrialSpec` parsed from it. A grid value may bundle several keys that vary together
(a transfer point's seed, widths and provenance) under `BUNDLE_KEY`; they are merged in first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from widthtune.models.registry import canonical_spec
from widthtune.models.spec import ModelSpec
from widthtune.search_spaces.domains import unflatten
from widthtune.trainables.artifacts import ARTIFACT_DIR_KEY, artifact_paths
from widthtune.trainables.retraining import Retraining
from widthtune.training.datasets import DataSpec
from widthtune.training.distill import DistillConfig
from widthtune.training.loop import TrainConfig

# a trial's checkpoint: its training state and found widths (plain tensors and JSON-able values)
CHECKPOINT_FILE = "trial_state.pt"
# a grid value that bundles several keys which must vary together
BUNDLE_KEY = "bundle"
# a data-parallel trial's Ray Train run, inside its trial folder (its checkpoints are named by time)
TRAIN_RUN = "ddp"


def _checkpoint_number(folder: Path) -> int:
    match = re.fullmatch(r"checkpoint_(\d+)", folder.name)
    return int(match.group(1)) if match else -1


def latest_checkpoint(trial_dir: Path) -> Path | None:
    """The newest `checkpoint_*/trial_state.pt` of a Tune trial folder, or of its Train run when the trial was
    data-parallel (a newest one left without it is skipped)."""
    patterns = (f"checkpoint_*/{CHECKPOINT_FILE}", f"{TRAIN_RUN}/checkpoint_*/{CHECKPOINT_FILE}")
    found = [p for pattern in patterns for p in Path(trial_dir).glob(pattern) if p.is_file()]
    return max(found, key=lambda p: (_checkpoint_number(p.parent), p.parent.name), default=None)


def expand_bundle(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat config with its bundle's keys merged in (a Tune grid varies one key per value)."""
    bundle = config.get(BUNDLE_KEY)
    flat = {k: v for k, v in config.items() if k != BUNDLE_KEY}
    return {**flat, **bundle} if isinstance(bundle, Mapping) else flat


def train_config(flat: Mapping[str, Any]) -> TrainConfig:
    """The trial's training recipe; the trial's seed is the training seed."""
    values = unflatten(flat, "train")
    if "milestones" in values:
        values["milestones"] = tuple(values["milestones"])
    return TrainConfig(**{**values, "seed": int(flat.get("seed", 0))})


@dataclass(frozen=True)
class Teacher:
    """A distillation teacher: its checkpoint, the model and widths it holds (else read beside it), the loss."""

    path: str
    model: str | None = None
    widths: Mapping[str, int] | None = None
    loss: DistillConfig = field(default_factory=DistillConfig)


@dataclass(frozen=True)
class TrialSpec:
    """Everything a trial needs, parsed once: model, method and its settings, data, recipe, target, retraining."""

    model: ModelSpec
    method: str
    seed: int
    data: DataSpec
    train: TrainConfig
    cost_target: Mapping[str, Any]
    retrain: Retraining
    params: Mapping[str, Any]
    teacher: Teacher | None = None
    artifacts: Mapping[str, str] = field(default_factory=dict)
    artifact_dir: str | None = None
    threads: int | None = None
    flat: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> TrialSpec:
        """Read the flat config (bundles merged in)."""
        flat = expand_bundle(config)
        distill = unflatten(flat, "distill")
        teacher = None
        if distill.get("teacher"):
            teacher = Teacher(
                str(distill["teacher"]),
                distill.get("teacher_model"),
                distill.get("teacher_widths"),
                DistillConfig(
                    **{k: float(distill[k]) for k in ("alpha", "temperature") if distill.get(k) is not None}
                ),
            )
        threads = flat.get("resources.cpu")
        return cls(
            model=canonical_spec(flat["model"]),
            method=str(flat["method"]),
            seed=int(flat.get("seed", 0)),
            data=DataSpec(**unflatten(flat, "data")),
            train=train_config(flat),
            cost_target=unflatten(flat, "cost_target"),
            retrain=Retraining(**unflatten(flat, "retrain")),
            params=unflatten(flat, "method"),
            teacher=teacher,
            artifacts=artifact_paths(flat),
            artifact_dir=flat.get(ARTIFACT_DIR_KEY),
            threads=max(1, int(threads)) if threads else None,
            flat=flat,
        )
