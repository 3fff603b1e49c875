"""The experiment config: YAML validated by pydantic, then checked against models, data, methods and Tune."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from widthtune.models.registry import canonical_spec, channel_space
from widthtune.search_spaces.cost_target import check_cost_target, parse_quantity
from widthtune.search_spaces.domains import Domain, DomainError, is_space, split_spaces
from widthtune.trainables.methods import METHODS, get_method
from widthtune.training.datasets import DataSpec
from widthtune.training.loop import TrainConfig

KINDS = ("sweep", "compare", "transfer")
CONTROLS = ("direct", "uniform")
SEARCHES = ("random", "grid", "optuna")
SAMPLERS = ("tpe", "nsga2", "gp")
SCHEDULERS = ("fifo", "asha", "hyperband", "median", "pbt")
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
    """Knowledge distillation for a method's retraining: a teacher and the loss weights (LW-DNA: 0.4, T 4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    teacher: str
    alpha: float = Field(default=0.4, ge=0, le=1)
    temperature: float = Field(default=4.0, gt=0)


class MethodEntry(BaseModel):
    """One method: its name, optional label, per-method search/scheduler/num_samples, and its hyperparameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str
    label: str | None = None
    num_samples: int | None = Field(default=None, ge=1)
    search: SearchConfig | None = None
    scheduler: SchedulerConfig | None = None
    retrain: dict[str, Any] | None = None
    distill: DistillEntry | None = None

    _shorthand = field_validator("search", "scheduler", mode="before")(_named)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The method's own settings (the extra keys), over its defaults."""
        return {**get_method(self.name).defaults, **(self.model_extra or {})}


class TransferConfig(BaseModel):
    """A transfer study: proxies to optimise widths on, how to extrapolate them, and the controls on the target."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    projections: list[Any] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    extrapolation: list[str] = Field(default_factory=lambda: ["stack-average-block"])
    proxy_train: dict[str, Any] = Field(default_factory=dict)
    controls: list[Literal["direct", "uniform"]] = Field(default_factory=lambda: list(CONTROLS))

    @field_validator("extrapolation", mode="before")
    @classmethod
    def _one_rule(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def plan(self) -> list[Any]:
        """Every projection: the compound tuples, then one per value of each single-axis grid."""
        from widthtune.search_spaces.projections import Projection

        out = [Projection.from_mapping(p) for p in self.projections]
        for axis, values in self.grid.items():
            out += [Projection.from_mapping({axis: v}) for v in values]
        return out


class ExperimentConfig(BaseModel):
    """One experiment: what to search, on what, under which budget, with which Tune machinery, stored where."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
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
    transfer: TransferConfig | None = None
    retrain: dict[str, Any] = Field(default_factory=dict)

    _shorthand = field_validator("search", "scheduler", "method", mode="before")(_named)

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
        names = [e.name for e in self.entries]
        out = []
        for i, entry in enumerate(self.entries):
            if entry.label:
                out.append(entry.label)
            elif names.count(entry.name) > 1:
                out.append(f"{entry.name}-{names[: i + 1].count(entry.name)}")
            else:
                out.append(entry.name)
        return out

    def as_dict(self) -> dict[str, Any]:
        """The validated config as plain data (what is saved and hashed)."""
        return self.model_dump(mode="json", exclude_none=True)

    def digest(self) -> str:
        """A short hash of the config: every stored row carries it."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]


def _format_pydantic(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"{loc}: unknown field; remove it or check its spelling"
    if first["type"] == "missing":
        return f"{loc}: required field is missing"
    return f"{loc}: {first.get('input')!r} is not allowed ({first['msg'][0].lower()}{first['msg'][1:]})"


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=value` (value parsed as YAML) into a copy of the raw config."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set train.epochs=5")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: {text!r} is not a YAML value") from None
        parts = key.strip().split(".")
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if isinstance(child, list):
                raise ConfigError(
                    f"--set {key}: cannot index into a list; set the whole list, e.g. {part}=[...]"
                )
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override, validate; every problem is a ConfigError naming the field."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of fields")
    return validate_config(apply_overrides(raw, overrides or []))


def validate_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Pydantic validation, then the checks that need models, data and methods."""
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_pydantic(error)) from None
    try:
        _check(config)
    except (DomainError, ValueError, KeyError, TypeError) as error:
        if isinstance(error, ConfigError):
            raise
        message = error.args[0] if error.args else str(error)
        raise ConfigError(str(message)) from None
    return config


def _candidates(domains: dict[str, Domain]) -> list[dict[str, Any]]:
    """Assignments that exercise every candidate value of every domain (one domain varied at a time)."""
    first = {k: d.candidates()[0] for k, d in domains.items()}
    out = [first]
    for key, domain in domains.items():
        for value in domain.candidates()[1:]:
            out.append({**first, key: value})
    return out


def _check_dataclass(cls: type, section: str, values: dict[str, Any], fixed: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"{section}.{key}: unknown field; allowed: {', '.join(sorted(names - set(fixed)))}"
            )
        if isinstance(value, dict) and not is_space(value):
            raise ConfigError(
                f"{section}.{key}: {value!r} is not a value or a space ({{uniform: [a, b]}}, ...)"
            )
    constants, domains = split_spaces(values, section)
    start = len(section) + 1
    for assignment in _candidates(domains):
        kwargs = {k[start:]: v for k, v in {**constants, **assignment}.items()} | fixed
        if "milestones" in kwargs and isinstance(kwargs["milestones"], list):
            kwargs["milestones"] = tuple(kwargs["milestones"])
        try:
            cls(**kwargs)
        except TypeError as error:
            raise ConfigError(f"{section}: {error}") from None


def _check(config: ExperimentConfig) -> None:
    if not config.entries:
        raise ConfigError(
            f"method: a {config.kind} needs a method (or methods); choose from: {', '.join(METHODS)}"
        )
    if config.method and config.methods:
        raise ConfigError("method/methods: give one of them, not both")
    if config.kind == "sweep" and len(config.entries) != 1:
        raise ConfigError(f"methods: a sweep runs one method, got {len(config.entries)}; use kind: compare")
    if len(set(config.labels())) != len(config.labels()):
        raise ConfigError(f"methods: labels must be distinct, got {', '.join(config.labels())}")
    try:
        spec = canonical_spec(config.model)
        space = channel_space(spec)
    except Exception as error:
        raise ConfigError(f"model: {config.model!r}: {error}") from None
    _check_dataclass(DataSpec, "data", config.data, {})
    _check_dataclass(TrainConfig, "train", config.train, {"seed": 0})
    if config.cost_target is not None:
        check_cost_target(config.cost_target)
        for key, value in config.cost_target.items():
            if key == "convention":
                continue
            _, domains = split_spaces({key: value}, "cost_target")
            values = domains[f"cost_target.{key}"].candidates() if domains else (value,)
            for candidate in values:
                parse_quantity(f"cost_target.{key}", candidate)
    _check_data_on_disk(config.data)
    val_fraction = config.data.get("val_fraction", 0.1)
    if not is_space(val_fraction) and val_fraction == 0:
        raise ConfigError(
            f"data.val_fraction: 0 leaves no validation split, which metric {config.metric} "
            "(scheduling and model selection) needs; choose a value in (0, 1)"
        )
    for entry, label in zip(config.entries, config.labels(), strict=True):
        _check_method(config, entry, label, space)
    _check_retrain(config)
    _check_distill(config)
    if config.kind == "transfer":
        _check_transfer(config, spec)
    elif config.transfer is not None:
        raise ConfigError(
            f"transfer: only a kind: transfer experiment takes a transfer section, not a {config.kind}"
        )


RETRAIN_FIELDS = ("mode", "finetune_epochs", "large_scale")


def _retrain_modes(section: dict[str, Any], where: str) -> list[str]:
    """The retraining modes a `retrain` section asks for (a value or a space), each checked."""
    from widthtune.trainables.retraining import RETRAIN_MODES

    for key in section:
        if key not in RETRAIN_FIELDS:
            raise ConfigError(f"{where}.{key}: unknown field; allowed: {', '.join(RETRAIN_FIELDS)}")
    constants, domains = split_spaces(section, "retrain")
    if "retrain.mode" in domains:
        modes = list(domains["retrain.mode"].candidates())
    else:
        modes = [constants.get("retrain.mode", "scratch-e")]
    for mode in modes:
        if mode not in RETRAIN_MODES:
            raise ConfigError(
                f"{where}.mode: {mode!r} is not allowed; choose from: {', '.join(RETRAIN_MODES)}"
            )
    epochs = constants.get("retrain.finetune_epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"{where}.finetune_epochs: {epochs!r} is not allowed; choose an integer >= 1")
    return modes


def _check_retrain(config: ExperimentConfig) -> None:
    """Retraining modes exist, fine-tuning has weights to start from, Scratch-B is not cut short by a scheduler."""
    _retrain_modes(config.retrain, "retrain")
    for entry, label in zip(config.entries, config.labels(), strict=True):
        where = f"methods[{label}].retrain" if entry.retrain is not None else "retrain"
        modes = _retrain_modes(entry.retrain if entry.retrain is not None else config.retrain, where)
        if "finetune" in modes and not get_method(entry.name).keeps_weights:
            keeping = ", ".join(m.name for m in METHODS.values() if m.keeps_weights)
            raise ConfigError(
                f"{where}.mode: finetune needs kept weights, and methods[{label}] ({entry.name}) keeps none; "
                f"fine-tune {keeping}, or give {label} its own retrain section without finetune"
            )
        scheduler = entry.scheduler or config.scheduler
        if "scratch-b" in modes and scheduler.name in ("asha", "hyperband"):
            raise ConfigError(
                f"{where}.mode: scratch-b trains longer than train.epochs, past {scheduler.name}'s max_t; "
                f"use scheduler fifo or median for methods[{label}]"
            )


def _check_distill(config: ExperimentConfig) -> None:
    """A teacher is an earlier method's label in this experiment, or a trial folder / checkpoint on disk."""
    labels = config.labels()
    for i, (entry, label) in enumerate(zip(config.entries, labels, strict=True)):
        if entry.distill is None:
            continue
        teacher = entry.distill.teacher
        if teacher in labels:
            if labels.index(teacher) >= i:
                raise ConfigError(
                    f"methods[{label}].distill.teacher: {teacher!r} must be listed before {label} (it trains first)"
                )
            continue
        if not Path(teacher).expanduser().exists():
            raise ConfigError(
                f"methods[{label}].distill.teacher: {teacher!r} is neither an earlier method's label "
                f"({', '.join(labels[:i]) or 'none'}) nor a trial folder or checkpoint file"
            )


def _check_transfer(config: ExperimentConfig, spec: Any) -> None:
    from widthtune.search_spaces.projections import AXES, EXTRAPOLATIONS, Projection, ProjectionError

    transfer = config.transfer
    if transfer is None or not (transfer.projections or transfer.grid):
        raise ConfigError(
            "transfer.projections: a transfer experiment needs projections, e.g. "
            "[{width: 0.5, depth: 0.5, resolution: 16, data_fraction: 0.25}], or a transfer.grid"
        )
    for axis in transfer.grid:
        if axis not in AXES:
            raise ConfigError(f"transfer.grid.{axis}: unknown axis; choose from: {', '.join(AXES)}")
    labels: list[str] = []
    for where, raw in [(f"transfer.projections[{i}]", p) for i, p in enumerate(transfer.projections)] + [
        (f"transfer.grid.{axis}", {axis: v}) for axis, values in transfer.grid.items() for v in values
    ]:
        try:
            projection = Projection.from_mapping(raw)
            projection.model(spec)
        except (ProjectionError, ValueError, TypeError) as error:
            raise ConfigError(f"{where}: {error}") from None
        labels.append(projection.label)
    if len(set(labels)) != len(labels):
        raise ConfigError(f"transfer.projections: projections repeat ({', '.join(labels)}); list each once")
    for rule in transfer.extrapolation:
        if rule not in EXTRAPOLATIONS:
            raise ConfigError(
                f"transfer.extrapolation: {rule!r} is not allowed; choose from: {', '.join(EXTRAPOLATIONS)}"
            )
    _check_dataclass(TrainConfig, "train", {**config.train, **transfer.proxy_train}, {"seed": 0})
    for entry in config.entries:
        if entry.name in ("uniform", "given"):
            raise ConfigError(
                f"methods: {entry.name} does not optimise widths, so there is nothing to transfer "
                "(uniform is a control already); list width optimisers such as direct"
            )
    from widthtune.models.registry import resolve_options

    resolution = resolve_options(spec)["resolution"]
    if config.data.get("resolution") not in (None, resolution):
        raise ConfigError(
            f"data.resolution: {config.data['resolution']!r} differs from the model's resolution={resolution}; "
            "a transfer study prices widths and overhead at the model's resolution, so give both the same"
        )
    for section in ("data", "cost_target"):
        _, domains = split_spaces(getattr(config, section) or {}, section)
        if domains:
            raise ConfigError(
                f"{next(iter(domains))}: a transfer experiment fixes the target's {section}; give a value, not a space"
            )


def _check_data_on_disk(data: dict[str, Any]) -> None:
    name = data.get("name", "digits")
    if name in ("cifar10", "cifar100", "imagefolder"):
        root = data.get("root")
        if not root:
            raise ConfigError(
                f"data.root: {name} is read from disk; set data.root to the folder that holds it"
            )
        if not Path(str(root)).expanduser().is_dir():
            raise ConfigError(f"data.root: {str(root)!r} is not a folder; {name} cannot be read from it")


def _check_method(config: ExperimentConfig, entry: MethodEntry, label: str, space: Any) -> None:
    method = get_method(entry.name)
    extra = entry.model_extra or {}
    unknown = [k for k in extra if k not in method.defaults]
    if unknown:
        allowed = ", ".join(method.defaults) or "none"
        raise ConfigError(
            f"methods[{label}].{unknown[0]}: unknown hyperparameter of {entry.name}; allowed: {allowed}"
        )
    constants, domains = split_spaces(entry.hyperparameters, "method")
    for assignment in _candidates(domains):
        try:
            method.check({k[len("method.") :]: v for k, v in {**constants, **assignment}.items()})
        except ValueError as error:
            raise ConfigError(f"methods[{label}]: {error}") from None
    search = entry.search or config.search
    scheduler = entry.scheduler or config.scheduler
    if method.width_space is not None:
        for k, d in domains.items():
            if k in ("space", "low", "high", "matched"):
                raise ConfigError(
                    f"methods[{label}].{k}: a width-space setting must be a value, not a {d.kind} space"
                )
        method.width_space(space, {**constants})
    all_domains = {
        **split_spaces(config.data, "data")[1],
        **split_spaces(config.train, "train")[1],
        **split_spaces(config.cost_target or {}, "cost_target")[1],
        **domains,
    }
    if search.name == "grid":
        loose = [k for k, d in all_domains.items() if d.kind not in ("grid", "choice")]
        if loose or method.width_space is not None:
            name = loose[0] if loose else "the width space"
            raise ConfigError(
                f"search: grid enumerates {{grid: [...]}} and {{choice: [...]}} only; {name} is continuous "
                "(use search: random or optuna)"
            )
    if search.name == "optuna" and search.objectives:
        bad = [o for o in search.objectives if o not in OBJECTIVES]
        if bad:
            raise ConfigError(
                f"search.objectives: {bad[0]!r} is not allowed; choose from: {', '.join(OBJECTIVES)}"
            )
    elif search.objectives:
        raise ConfigError(
            "search.objectives: several objectives need search: optuna (sampler nsga2, tpe or gp)"
        )
    if scheduler.name == "pbt":
        if search.name == "optuna":
            raise ConfigError("scheduler: pbt explores by itself; use search: random with it, not optuna")
        if not scheduler.hyperparam_mutations:
            raise ConfigError(
                f"scheduler.hyperparam_mutations: pbt needs at least one; choose from: {', '.join(PBT_MUTABLE)}"
            )
        for key, value in scheduler.hyperparam_mutations.items():
            if key not in PBT_MUTABLE:
                raise ConfigError(
                    f"scheduler.hyperparam_mutations.{key}: not mutable mid-training; "
                    f"choose from: {', '.join(PBT_MUTABLE)}"
                )
            if not (is_space(value) or (isinstance(value, list) and value)):
                raise ConfigError(
                    f"scheduler.hyperparam_mutations.{key}: {value!r} must be a space or a non-empty list"
                )
    if (
        search.name == "optuna"
        and search.objectives
        and len(search.objectives) > 1
        and scheduler.name == "pbt"
    ):
        raise ConfigError("scheduler: pbt cannot serve several objectives")
