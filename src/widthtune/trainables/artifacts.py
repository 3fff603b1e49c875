"""Shared artifacts: something trained (or computed) once per experiment, recipe and seed, used by many trials.

A method, or a config entry, names an artifact by its recipe: a kind (`trained-model`, `best-trial`,
`transfer-points`, or one a plugin registers with the platform) and the JSON-able settings it is built from.
The recipe's hash names it, so two trials asking for the same recipe share one artifact. The platform builds
it before the first trial that needs it and hands every such trial its path (`artifact.<name>` in the flat
trial config, `Task.artifacts[name]` in a method).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ARTIFACT_PREFIX = "artifact."
# the folder a trained-model artifact's trial writes its final weights into (absolute)
ARTIFACT_DIR_KEY = "artifact.dir"
MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class ArtifactRecipe:
    """What an artifact is built from; equal recipes (and seeds) are one artifact."""

    kind: str
    recipe: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    @property
    def key(self) -> str:
        """`<kind>-<hash>`: the artifact's folder and its name in the store and in MLflow."""
        text = json.dumps({"kind": self.kind, "recipe": self.recipe, "seed": self.seed}, sort_keys=True)
        return f"{self.kind}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"

    def as_dict(self) -> dict[str, Any]:
        """Plain data, saved with the experiment's state."""
        return {"kind": self.kind, "recipe": json.loads(json.dumps(self.recipe)), "seed": self.seed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactRecipe:
        """The recipe `as_dict` saved."""
        return cls(str(data["kind"]), dict(data.get("recipe") or {}), int(data.get("seed", 0)))


@dataclass(frozen=True)
class ArtifactContext:
    """What a method's artifact recipes may depend on: the trial's model, data and recipe, and its seed."""

    model: str
    data: Mapping[str, Any]
    train: Mapping[str, Any]
    seed: int


def trained_model(
    context: ArtifactContext,
    *,
    multiplier: float | None = None,
    widths: Mapping[str, int] | None = None,
    model: str | None = None,
    train: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> ArtifactRecipe:
    """A model trained from scratch once (a teacher, a pretrained baseline): the trial's recipe unless overridden."""
    recipe: dict[str, Any] = {
        "model": model or context.model,
        "data": dict(context.data),
        "train": {**context.train, **(train or {})},
    }
    if widths is not None:
        recipe["widths"] = {str(k): int(v) for k, v in widths.items()}
    else:
        recipe["multiplier"] = 1.0 if multiplier is None else float(multiplier)
    return ArtifactRecipe("trained-model", recipe, context.seed if seed is None else int(seed))


def artifact_paths(flat: Mapping[str, Any]) -> dict[str, str]:
    """The artifacts a flat trial config was handed: name -> path."""
    return {
        key[len(ARTIFACT_PREFIX) :]: str(value)
        for key, value in flat.items()
        if key.startswith(ARTIFACT_PREFIX) and key != ARTIFACT_DIR_KEY
    }
