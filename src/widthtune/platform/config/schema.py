"""The experiment config's schema: its fields, their types and defaults (pydantic); deeper checks live in checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from widthtune.search_spaces.projections import Projection
from widthtune.trainables.registry import USER_PREFIX, get_method

KINDS = ("sweep", "compare", "transfer")
# a transfer study's cost target when it names none: the target's own cost (equal FLOPs, the paper's eq. 1)
TRANSFER_COST_TARGET = {"ratio": 1.0}
# what a transfer study trains on the target beside the transferred widths
BASELINES = ("direct", "uniform")
# experiment names and method labels: they become folder names, file names and MLflow filter values
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
OBJECTIVES = {
    "val_acc": "max",
    "val_loss": "min",
    "test_acc": "max",
    "macs": "min",
    "flops": "min",
    "params": "min",
}
PBT_MUTABLE = ("train.lr", "train.momentum", "train.weight_decay", "train.label_smoothing")


class ConfigError(ValueError):
    """The config is wrong; the message names the field, the value and what is allowed."""


def _named(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class SearchConfig(BaseModel):
    """How trials are proposed: Tune's random/grid variant generator, or Optuna (define-by-run)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["random", "grid", "optuna"] = "random"
    sampler: Literal["tpe", "nsga2", "gp"] = "tpe"
    objectives: list[str] | None = None
    max_concurrent: int | None = Field(default=None, ge=1)


class SchedulerConfig(BaseModel):
    """Which Tune scheduler stops (or, for PBT, exploits) trials; time is counted in epochs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["fifo", "asha", "hyperband", "median", "pbt"] = "fifo"
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=3.0, gt=1)
    min_samples_required: int = Field(default=3, ge=1)
    perturbation_interval: int = Field(default=2, ge=1)
    quantile_fraction: float = Field(default=0.25, gt=0, le=0.5)
    resample_probability: float = Field(default=0.25, ge=0, le=1)
    hyperparam_mutations: dict[str, Any] = Field(default_factory=dict)


class Resources(BaseModel):
    """Per-trial resources (fractional GPUs share one device)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)


class DistillEntry(BaseModel):
    """Knowledge distillation for a method's retraining: a teacher and the loss weights (LW-DNA: 0.4, T 4).

    The teacher is an earlier method's label (its best trial), a checkpoint or trial folder on disk, or a recipe
    (`{multiplier: 2.0}`, `{widths: {...}}`, with optional `model`, `train`, `seed`) trained once as a shared
    artifact.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    teacher: str | dict[str, Any]
    alpha: float = Field(default=0.4, ge=0, le=1)
    temperature: float = Field(default=4.0, gt=0)


class MethodEntry(BaseModel):
    """One method: its name, optional label, per-method search/scheduler/num_samples, and its hyperparameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str
    label: str | None = Field(default=None, pattern=NAME_PATTERN)
    num_samples: int | None = Field(default=None, ge=1)
    search: SearchConfig | None = None
    scheduler: SchedulerConfig | None = None
    retrain: dict[str, Any] | None = None
    distill: DistillEntry | None = None

    _shorthand = field_validator("search", "scheduler", mode="before")(_named)

    @field_validator("name")
    @classmethod
    def _absolute_method_file(cls, value: str) -> str:
        """A method file's path made absolute (trials run in their own working directory)."""
        if value.startswith(USER_PREFIX):
            return USER_PREFIX + str(Path(value[len(USER_PREFIX) :]).expanduser().resolve())
        return value

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The method's own settings (the extra keys), over its defaults."""
        return {**get_method(self.name).defaults, **(self.model_extra or {})}


class TransferConfig(BaseModel):
    """A transfer study: proxies to optimise widths on, how to extrapolate them, and the baselines on the target."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    projections: list[Any] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    extrapolation: list[str] = Field(default_factory=lambda: ["stack-average-block"])
    proxy_train: dict[str, Any] = Field(default_factory=dict)
    baselines: list[Literal["direct", "uniform"]] = Field(default_factory=lambda: list(BASELINES))

    @field_validator("extrapolation", mode="before")
    @classmethod
    def _one_rule(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def plan(self) -> list[Projection]:
        """Every projection: the compound tuples, then one per value of each single-axis grid."""
        out = [Projection.from_mapping(p) for p in self.projections]
        for axis, values in self.grid.items():
            out += [Projection.from_mapping({axis: v}) for v in values]
        return out


class ExperimentConfig(BaseModel):
    """One experiment: what to search, on what, under which budget, with which Tune machinery, stored where."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["sweep", "compare", "transfer"] = "sweep"
    model: str
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    method: MethodEntry | None = None
    methods: list[MethodEntry] | None = None
    cost_target: dict[str, Any] | None = None
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: Resources = Resources()
    num_samples: int = Field(default=1, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    storage: str = "runs"
    local_dir: str = "runs"
    tracking_uri: str | None = None
    max_failures: int = Field(default=1, ge=0)
    infra_retries: int = Field(default=3, ge=0)
    reuse_actors: bool = True
    transfer: TransferConfig | None = None
    retrain: dict[str, Any] = Field(default_factory=dict)

    _shorthand = field_validator("search", "scheduler", "method", mode="before")(_named)

    @model_validator(mode="before")
    @classmethod
    def _transfer_at_equal_cost(cls, data: Any) -> Any:
        """A transfer study without a cost target optimises at the target's own cost (the paper's eq. 1)."""
        if isinstance(data, dict) and data.get("kind") == "transfer" and data.get("cost_target") is None:
            return {**data, "cost_target": dict(TRANSFER_COST_TARGET)}
        return data

    @field_validator("methods", mode="before")
    @classmethod
    def _method_names(cls, value: Any) -> Any:
        return [_named(v) for v in value] if isinstance(value, list) else value

    @property
    def entries(self) -> list[MethodEntry]:
        """The methods to run, in order."""
        return list(self.methods or ([self.method] if self.method else []))

    def labels(self) -> list[str]:
        """A distinct label per method entry (name, or name-N when a name repeats)."""
        names = [get_method(e.name).name for e in self.entries]
        out = []
        for i, entry in enumerate(self.entries):
            if entry.label:
                out.append(entry.label)
            elif names.count(names[i]) > 1:
                out.append(f"{names[i]}-{names[: i + 1].count(names[i])}")
            else:
                out.append(names[i])
        return out

    def as_dict(self) -> dict[str, Any]:
        """The validated config as plain data (what is saved and hashed)."""
        return self.model_dump(mode="json", exclude_none=True)

    def digest(self) -> str:
        """A short hash of the config: every stored row carries it."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]
