"""Building shared artifacts: each kind is trained by one Tune study, or computed in the driver from the store.

An artifact is built once per experiment and recipe (its key), before the first study that needs it; its record
(status, path, what it hands to trials, why it failed) is kept in the experiment's state and in the results
store's artifact table, and a trained one is also a trial in MLflow and Parquet (role `artifact`). A study that
needs an artifact receives it in its constants (the path under the key that asked for it) or, for an artifact
that is a list of points, as a grid over them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from widthtune.models.registry import canonical_spec
from widthtune.platform.config import ExperimentConfig
from widthtune.platform.studies import Study
from widthtune.platform.transfer import POINTS, transfer_points
from widthtune.results.roles import ARTIFACT
from widthtune.results.selection import select
from widthtune.results.store import read_trials
from widthtune.search_spaces.domains import Domain
from widthtune.trainables.artifacts import ARTIFACT_DIR_KEY, MODEL_FILE, ArtifactRecipe
from widthtune.trainables.supernet_training import SUPERNET_FILE, SUPERNET_KIND, train_supernet

ARTIFACTS_DIR = "artifacts"


class ArtifactFailed(RuntimeError):
    """An artifact could not be built; the trials that need it fail with this reason."""


@dataclass(frozen=True)
class Built:
    """A finished artifact: its folder, and what a study that needs it under `key` receives."""

    path: str
    constants: Mapping[str, Any] = field(default_factory=dict)
    grid: tuple[Any, ...] | None = None
    notes: tuple[str, ...] = ()

    def bind(self, key: str, study: Study) -> Study:
        """The study with this artifact handed to it under `key` (a value, or a grid over points)."""
        if self.grid is not None:
            return replace(study, domains={**study.domains, key: Domain("grid", tuple(self.grid))})
        return replace(study, constants={**study.constants, **self.constants})

    def as_dict(self) -> dict[str, Any]:
        """Plain data, saved in the experiment's state."""
        return {
            "path": self.path,
            "constants": dict(self.constants),
            "grid": list(self.grid) if self.grid is not None else None,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Built:
        """What `as_dict` saved."""
        grid = data.get("grid")
        return cls(data["path"], dict(data.get("constants") or {}), tuple(grid) if grid is not None else None)


@dataclass(frozen=True)
class ArtifactKind:
    """How one kind of artifact is made: a Tune study that trains it (then `collect`), or `collect` alone."""

    name: str
    summary: str
    collect: Callable[[ArtifactRecipe, str, Path, ExperimentConfig, Path], Built]
    study: Callable[[ArtifactRecipe, Path, ExperimentConfig], Study] | None = None


def artifact_dir(directory: Path, recipe: ArtifactRecipe) -> Path:
    """Where an artifact lives in the experiment folder."""
    return Path(directory) / ARTIFACTS_DIR / recipe.key


def _trained_model_study(recipe: ArtifactRecipe, folder: Path, config: ExperimentConfig) -> Study:
    """One trial of `given` (or `uniform` under a multiplier) that writes its final model into the folder."""
    settings = recipe.recipe
    if "widths" in settings:
        method = {"method": "given", "method.widths": settings["widths"], "method.match": False}
    else:
        method = {"method": "uniform", "method.multiplier": float(settings["multiplier"])}
    constants = {
        "experiment": config.name,
        "model": str(canonical_spec(settings["model"])),
        "metric": config.metric,
        "resources.cpu": config.resources.cpu,
        "label": recipe.kind,
        "role": ARTIFACT,
        "seed": recipe.seed,
        "study": f"artifact-{recipe.key}",
        ARTIFACT_DIR_KEY: str(folder),
        **{f"data.{k}": v for k, v in settings["data"].items()},
        **{f"train.{k}": v for k, v in settings["train"].items()},
        **method,
    }
    search, scheduler = config.search.model_copy(update={"name": "random"}), config.scheduler
    return Study(
        key=f"artifact-{recipe.key}",
        label=recipe.kind,
        method=constants["method"],
        model=constants["model"],
        search=search,
        scheduler=scheduler.model_copy(update={"name": "fifo"}),
        num_samples=1,
        seed=recipe.seed,
        constants=constants,
        domains={},
    )


def _trained_model(
    recipe: ArtifactRecipe, key: str, folder: Path, config: ExperimentConfig, directory: Path
) -> Built:
    model = folder / MODEL_FILE
    if not model.is_file():
        rows = [r for r in read_trials(directory / "results") if r["study"] == f"artifact-{recipe.key}"]
        reason = next((r["error"] for r in rows if r["error"]), None) or "its training did not finish"
        raise ArtifactFailed(f"artifact {recipe.key} ({recipe.kind}): {reason}")
    return Built(str(folder), {key: str(model)})


def _best_trial(
    recipe: ArtifactRecipe, key: str, folder: Path, config: ExperimentConfig, directory: Path
) -> Built:
    """The best completed trial of an earlier method: its checkpoint, trial, model and widths under `key*`."""
    label = recipe.recipe["label"]
    rows = [r for r in read_trials(directory / "results") if r["label"] == label and r["checkpoint"]]
    chosen = select(rows)
    if chosen is None:
        raise ArtifactFailed(f"method {label!r} has no completed trial with a checkpoint to hand on")
    return Built(
        chosen["checkpoint"],
        {
            key: chosen["checkpoint"],
            f"{key}_trial": chosen["trial_key"],
            f"{key}_model": chosen["model"],
            f"{key}_widths": dict(zip(chosen["group_names"], chosen["widths"], strict=True)),
        },
    )


def _transfer_points(
    recipe: ArtifactRecipe, key: str, folder: Path, config: ExperimentConfig, directory: Path
) -> Built:
    """One method's transferred width vectors, from its proxies' stored trials (saved as `points.json`)."""
    points, skipped = transfer_points(config, recipe.recipe["label"], read_trials(directory / "results"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "points.json").write_text(json.dumps({"points": points, "skipped": skipped}, indent=1))
    return Built(str(folder), grid=tuple(points), notes=tuple(f"transfer: skipped {s}" for s in skipped))


def _trained_supernet(
    recipe: ArtifactRecipe, key: str, folder: Path, config: ExperimentConfig, directory: Path
) -> Built:
    """A weight-sharing supernet trained once (AutoSlim's or CafeNet's rule), in a Ray task with a trial's
    resources when Ray runs; it checkpoints every epoch, so building it again after a kill resumes."""
    try:
        import ray

        if ray.is_initialized():
            task = ray.remote(train_supernet).options(
                num_cpus=config.resources.cpu, num_gpus=config.resources.gpu, max_retries=0
            )
            summary = ray.get(task.remote(recipe, folder))
        else:
            summary = train_supernet(recipe, folder)
    except (ValueError, RuntimeError, OSError) as error:
        cause = getattr(error, "cause", None) or error
        raise ArtifactFailed(
            f"artifact {recipe.key} ({recipe.kind}): {type(cause).__name__}: {cause}"
        ) from None
    return Built(
        str(folder),
        {key: str(folder / SUPERNET_FILE)},
        notes=(
            f"supernet {recipe.key}: {summary.epochs} epochs, {summary.flops:.3g} FLOPs, "
            f"{summary.seconds:.0f} s ({summary.resumes} resumes)",
        ),
    )


KINDS: dict[str, ArtifactKind] = {
    kind.name: kind
    for kind in (
        ArtifactKind(
            "trained-model",
            "a model trained from scratch once (a teacher, a pretrained baseline)",
            _trained_model,
            _trained_model_study,
        ),
        ArtifactKind(
            SUPERNET_KIND,
            "a weight-sharing supernet trained once (sandwich rule or min-min)",
            _trained_supernet,
        ),
        ArtifactKind("best-trial", "an earlier method's best completed trial (its checkpoint)", _best_trial),
        ArtifactKind(POINTS, "a method's proxy results extrapolated to the target", _transfer_points),
    )
}


def artifact_kind(recipe: ArtifactRecipe) -> ArtifactKind:
    """The kind that builds a recipe, or an error that lists the kinds."""
    if recipe.kind not in KINDS:
        raise ArtifactFailed(f"artifact kind {recipe.kind!r} is unknown; kinds: {', '.join(KINDS)}")
    return KINDS[recipe.kind]
