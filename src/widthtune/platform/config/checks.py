"""The checks a config passes before anything starts: each owner checks its own part (never a second copy).

Data on disk is checked by `training`, retraining settings by `trainables.retraining`, each method by its own
`check` and declarations, projections by `search_spaces.projections`; what is left here is how the parts fit.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from widthtune.models.cost import CostModel
from widthtune.models.registry import canonical_spec, channel_space, resolve_options
from widthtune.models.space import ChannelSpace
from widthtune.models.spec import ModelSpec, parse_spec
from widthtune.models.widths import Widths, largest_width, smallest_width
from widthtune.platform.config.schema import (
    OBJECTIVES,
    PBT_MUTABLE,
    ConfigError,
    ExperimentConfig,
    MethodEntry,
)
from widthtune.platform.tracking_uri import check_tracking_uri
from widthtune.search_spaces.cost_target import (
    CostTarget,
    check_cost_target,
    parse_quantity,
    resolve_cost_target,
)
from widthtune.search_spaces.domains import Domain, is_space, split_spaces, unflatten
from widthtune.search_spaces.projections import AXES, EXTRAPOLATIONS, Projection, ProjectionError
from widthtune.trainables.registry import get_method, registered
from widthtune.trainables.retraining import retrain_modes
from widthtune.training.datasets import DataSpec, check_dataset
from widthtune.training.loop import TrainConfig

# the settings a teacher recipe (`distill.teacher: {...}`) may give
TEACHER_RECIPE_KEYS = ("multiplier", "widths", "model", "train", "seed")


def _candidates(domains: dict[str, Domain]) -> list[dict[str, Any]]:
    """Assignments that exercise every candidate value of every domain (one domain varied at a time)."""
    first = {k: d.candidates()[0] for k, d in domains.items()}
    out = [first]
    for key, domain in domains.items():
        for value in domain.candidates()[1:]:
            out.append({**first, key: value})
    return out


def _kind_of(default: Any) -> tuple[tuple[type, ...], str] | None:
    """The values a dataclass field with this default takes, and how to say so (None: anything)."""
    if isinstance(default, bool):
        return (bool,), "true or false"
    if isinstance(default, int):
        return (int,), "an integer"
    if isinstance(default, float):
        return (int, float), "a number"
    if isinstance(default, str):
        return (str,), "a string"
    if isinstance(default, tuple):
        return (list, tuple), "a list"
    return None


def _check_value_type(field: str, value: Any, default: Any) -> None:
    kind = _kind_of(default)
    if kind is None or value is None:
        return
    types, words = kind
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"{field}: {value!r} is not allowed; choose {words}")
    if not isinstance(value, types):
        raise ConfigError(f"{field}: {value!r} is not allowed; choose {words}")


def _check_dataclass(cls: type, section: str, values: dict[str, Any], fixed: dict[str, Any]) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"{section}.{key}: unknown field; allowed: {', '.join(sorted(set(fields) - set(fixed)))}"
            )
        if isinstance(value, dict) and not is_space(value):
            raise ConfigError(
                f"{section}.{key}: {value!r} is not a value or a space ({{uniform: [a, b]}}, ...)"
            )
    constants, domains = split_spaces(values, section)
    start = len(section) + 1
    for key, domain in domains.items():
        default = fields[key[start:]].default
        for candidate in domain.candidates():
            _check_value_type(key, candidate, default)
    for key, value in constants.items():
        _check_value_type(key, value, fields[key[start:]].default)
    for assignment in _candidates(domains):
        kwargs = {k[start:]: v for k, v in {**constants, **assignment}.items()} | fixed
        if "milestones" in kwargs and isinstance(kwargs["milestones"], list):
            kwargs["milestones"] = tuple(kwargs["milestones"])
        try:
            cls(**kwargs)
        except TypeError as error:
            raise ConfigError(f"{section}: {error}") from None


def aligned(config: ExperimentConfig) -> ExperimentConfig:
    """The config with one resolution for the model and the data: the model is priced at what it trains on.

    The data's resolution sets the model's when the model spec leaves it out; the model's (given or its
    family's default) sets the data's when the data section leaves it out; two different values are an error.
    """
    try:
        spec = parse_spec(config.model)
        options = resolve_options(spec)
        channel_space(spec)
    except ValueError:
        return config  # check() names what is wrong with the model
    data = config.data.get("resolution")
    if is_space(data):
        raise ConfigError(
            "data.resolution: give a value, not a space; the model is built and priced at the data's resolution"
        )
    model = spec.kwargs.get("resolution")
    if data is not None and model is not None and data != model:
        raise ConfigError(
            f"data.resolution: {data!r} differs from the model's resolution={model}; a model is priced and "
            "exported at the resolution it trains on, so give one of them (or both the same)"
        )
    resolution = data if data is not None else options["resolution"]
    return config.model_copy(
        update={
            "model": str(spec.with_options(resolution=resolution)),
            "data": {**config.data, "resolution": resolution},
        }
    )


def check(config: ExperimentConfig) -> None:
    """Every check that needs models, data, methods or Tune; the first problem is a ConfigError naming its field."""
    if not config.entries:
        raise ConfigError(
            f"method: a {config.kind} needs a method (or methods); choose from: {', '.join(registered())}"
        )
    for entry in config.entries:
        get_method(entry.name)
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
    _check_dataclass(TrainConfig, "train", config.train, {"seed": 0})
    if config.cost_target is not None:
        check_cost_target(config.cost_target)
        for key, value in config.cost_target.items():
            if key in ("convention", "tolerance"):
                continue
            _, domains = split_spaces({key: value}, "cost_target")
            values = domains[f"cost_target.{key}"].candidates() if domains else (value,)
            for candidate in values:
                parse_quantity(f"cost_target.{key}", candidate)
    _check_data(config.data)
    val_fraction = config.data.get("val_fraction", 0.1)
    if not is_space(val_fraction) and val_fraction == 0:
        raise ConfigError(
            f"data.val_fraction: 0 leaves no validation split, which metric {config.metric} "
            "(scheduling and model selection) needs; choose a value in (0, 1)"
        )
    try:
        cost_model = CostModel.from_spec(spec)
    except RuntimeError as error:  # the model cannot run on its input (pooled below one pixel, say)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"model: {config.model!r} does not run at resolution {resolve_options(spec)['resolution']} "
            f"(the data's): {first}; give data.resolution a size the model takes"
        ) from None
    targets = _cost_targets(config, cost_model)
    for entry, label in zip(config.entries, config.labels(), strict=True):
        _check_method(config, entry, label, space)
        _check_reach(entry, label, targets, cost_model)
    _check_retrain(config)
    _check_distill(config)
    _check_storage(config)
    if config.kind == "transfer":
        _check_transfer(config, spec)
    elif config.transfer is not None:
        raise ConfigError(
            f"transfer: only a kind: transfer experiment takes a transfer section, not a {config.kind}"
        )


def _retrain_modes(section: dict[str, Any], where: str) -> list[str]:
    try:
        return retrain_modes(section, where)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_storage(config: ExperimentConfig) -> None:
    """Local storage is (or can become) a writable folder; the tracking URI is one MLflow can use."""
    for field, value in (("storage", config.storage), ("local_dir", config.local_dir)):
        if "://" in value:
            continue
        path = Path(value).expanduser()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(
                f"{field}: {value!r} cannot be a folder: {str(existing)!r} is a file; give a folder path"
            )
        if not os.access(existing, os.W_OK):
            raise ConfigError(f"{field}: {str(existing)!r} is not writable; give a folder you can write to")
    if config.tracking_uri is not None:
        try:
            check_tracking_uri(config.tracking_uri, reach=False)
        except ValueError as error:
            raise ConfigError(str(error)) from None


def _check_retrain(config: ExperimentConfig) -> None:
    """Retraining modes exist, fine-tuning has weights to start from, Scratch-B is not cut short by a scheduler."""
    _retrain_modes(config.retrain, "retrain")
    for entry, label in zip(config.entries, config.labels(), strict=True):
        where = f"methods[{label}].retrain" if entry.retrain is not None else "retrain"
        modes = _retrain_modes(entry.retrain if entry.retrain is not None else config.retrain, where)
        if "finetune" in modes and not get_method(entry.name).keeps_weights:
            keeping = ", ".join(m.name for m in registered().values() if m.keeps_weights)
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
        if isinstance(teacher, dict):
            _check_teacher_recipe(teacher, f"methods[{label}].distill.teacher", config)
            continue
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


def _check_teacher_recipe(recipe: dict[str, Any], where: str, config: ExperimentConfig) -> None:
    """A teacher trained once from a recipe: its model, widths or multiplier, and recipe overrides."""
    unknown = [k for k in recipe if k not in TEACHER_RECIPE_KEYS]
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field; allowed: {', '.join(TEACHER_RECIPE_KEYS)}")
    if "widths" in recipe and "multiplier" in recipe:
        raise ConfigError(f"{where}: give widths or multiplier, not both")
    multiplier = recipe.get("multiplier", 1.0)
    if isinstance(multiplier, bool) or not isinstance(multiplier, int | float) or multiplier <= 0:
        raise ConfigError(f"{where}.multiplier: {multiplier!r} is not allowed; choose a number > 0")
    try:
        spec = canonical_spec(recipe.get("model", config.model))
        if "widths" in recipe:
            Widths.from_mapping(channel_space(spec), recipe["widths"])
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    train = recipe.get("train", {})
    if not isinstance(train, dict):
        raise ConfigError(f"{where}.train: {train!r} is not a mapping of training settings")
    _check_dataclass(TrainConfig, f"{where}.train", train, {"seed": 0})
    seed = recipe.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}.seed: {seed!r} is not allowed; choose an integer")


def _check_transfer(config: ExperimentConfig, spec: ModelSpec) -> None:
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
        if not get_method(entry.name).optimises_widths:
            optimisers = ", ".join(m.name for m in registered().values() if m.optimises_widths)
            raise ConfigError(
                f"methods: {entry.name} does not optimise widths, so there is nothing to transfer "
                f"(uniform is a baseline already); list width optimisers: {optimisers}"
            )
    for section in ("data", "cost_target"):
        _, domains = split_spaces(getattr(config, section) or {}, section)
        if domains:
            raise ConfigError(
                f"{next(iter(domains))}: a transfer experiment fixes the target's {section}; give a value, not a space"
            )


def _check_data(data: dict[str, Any]) -> None:
    """The data section's values (every candidate of a space) and what is on disk, by `training`'s own checks."""
    _check_dataclass(DataSpec, "data", data, {})
    constants, domains = split_spaces(data, "data")
    for assignment in _candidates(domains):
        values = {k[len("data.") :]: v for k, v in {**constants, **assignment}.items()}
        try:
            check_dataset(DataSpec(**values))
        except (ValueError, FileNotFoundError) as error:
            raise ConfigError(str(error.args[0] if error.args else error)) from None


def _cost_targets(config: ExperimentConfig, cost_model: CostModel) -> list[tuple[str, CostTarget]]:
    """Every cost target the experiment asks for (each candidate of a space), with how it was written."""
    if not config.cost_target:
        return []
    constants, domains = split_spaces(config.cost_target, "cost_target")
    out = []
    for assignment in _candidates(domains):
        section = {k[len("cost_target.") :]: v for k, v in {**constants, **assignment}.items()}
        written = ", ".join(f"{k}: {v}" for k, v in section.items())
        try:
            target = resolve_cost_target(section, cost_model)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        out.append((written, target))
    return out


def _check_reach(
    entry: MethodEntry, label: str, targets: list[tuple[str, CostTarget]], cost_model: CostModel
) -> None:
    """Each cost target lies between the model at its smallest widths and the widest the method can reach."""
    method = get_method(entry.name)
    space = cost_model.space
    low_widths = np.asarray([smallest_width(g) for g in space], dtype=np.float64)
    if method.widest is None:
        high_widths = np.asarray([largest_width(g) for g in space], dtype=np.float64)
    else:
        params = {**method.defaults, **(entry.model_extra or {})}
        try:
            factor = float(method.widest(params))
        except (TypeError, ValueError):
            return  # a space or a bad value: the method's own check has spoken
        high_widths = np.asarray(
            [min(largest_width(g), max(smallest_width(g), round(g.base * factor))) for g in space],
            dtype=np.float64,
        )
    for written, target in targets:
        low = float(cost_model.cost(low_widths, target.convention))
        high = float(cost_model.cost(high_widths, target.convention))
        if not low * (1 - target.tolerance) <= target.value <= high * (1 + target.tolerance):
            base = cost_model.base()[target.convention]
            raise ConfigError(
                f"cost_target: {{{written}}} ({target.value:,.0f} {target.convention}) is out of reach for "
                f"methods[{label}] ({method.name}): it reaches {low:,.0f} to {high:,.0f} {target.convention} on "
                f"this model, a ratio of {low / base:.3g} to {high / base:.3g} of the base"
            )


def _check_method(config: ExperimentConfig, entry: MethodEntry, label: str, space: ChannelSpace) -> None:
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
            method.check(unflatten({**constants, **assignment}, "method"))
        except ValueError as error:
            raise ConfigError(f"methods[{label}]: {error}") from None
    search = entry.search or config.search
    scheduler = entry.scheduler or config.scheduler
    for k, d in domains.items():
        if k[len("method.") :] in method.fixed_keys:
            raise ConfigError(
                f"methods[{label}].{k[len('method.') :]}: a width-space setting must be a value, not a {d.kind} space"
            )
    if method.width_space is not None:
        method.width_space(space, unflatten(constants, "method"))
    if method.check_model is not None:
        try:
            method.check_model(unflatten(constants, "method"), space)
        except ValueError as error:
            raise ConfigError(f"methods[{label}]: {error}") from None
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
    if scheduler.name == "hyperband" and search.max_concurrent:
        raise ConfigError(
            "search.max_concurrent: Tune's HyperBand never fills a bracket under a concurrency limit (its trials "
            "wait forever or all train to the end); leave max_concurrent out, or use scheduler asha"
        )
    if scheduler.name == "pbt":
        if config.resources.distributed:
            raise ConfigError(
                "scheduler: pbt copies one trial's checkpoint into another, and a data-parallel trial "
                "(resources.workers > 1) keeps its checkpoints in its own Ray Train run; use asha, hyperband, "
                "median or fifo with it"
            )
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
