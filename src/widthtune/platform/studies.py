"""From a config to studies: one Tune run each, with its param space, searcher and scheduler.

A study is one method under one search. `grid` values and `seeds` are enumerated: inside one study for
Tune's variant generator, or as separate studies for Optuna (an Optuna study searches; it does not enumerate).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from widthtune.models.cost import CostModel
from widthtune.models.registry import canonical_spec
from widthtune.platform.config import OBJECTIVES, ExperimentConfig, MethodEntry, SchedulerConfig, SearchConfig
from widthtune.search_spaces.cost_target import resolve_cost_target
from widthtune.search_spaces.domains import Domain, is_space, parse_domain, split_spaces, unflatten
from widthtune.search_spaces.width_space import WidthSpace, constrain
from widthtune.trainables.artifacts import ARTIFACT_PREFIX, ArtifactContext, ArtifactRecipe, trained_model
from widthtune.trainables.registry import get_method
from widthtune.training.loop import TrainConfig


@dataclass(frozen=True)
class Study:
    """One Tune run: a method label, its searcher and scheduler, fixed values and the spaces left to search."""

    key: str
    label: str
    method: str
    model: str
    search: SearchConfig
    scheduler: SchedulerConfig
    num_samples: int
    seed: int
    constants: Mapping[str, Any]
    domains: Mapping[str, Domain]
    width_space: WidthSpace | None = None
    enumerated: Mapping[str, Any] = field(default_factory=dict)
    # shared artifacts built before the study runs: flat config key -> recipe (the key receives the artifact)
    needs: Mapping[str, ArtifactRecipe] = field(default_factory=dict)

    @property
    def expected_trials(self) -> int:
        """How many trials the study runs to its end: every grid combination num_samples times (Optuna: the
        samples); fewer ended trials means it was interrupted, whatever Tune's result grid holds."""
        if self.search.name == "optuna":
            return self.num_samples
        combinations = 1
        for domain in self.domains.values():
            if domain.kind == "grid":
                combinations *= len(domain.values)
        return self.num_samples * combinations

    def param_space(self) -> dict[str, Any]:
        """The Tune param space (variant generator): constants, sampled domains, grids as grid_search."""
        space: dict[str, Any] = dict(self.constants)
        space.update({k: d.to_tune() for k, d in self.domains.items()})
        if self.width_space is not None:
            space.update(self.width_space.to_tune())
        return space


@dataclass(frozen=True)
class OptunaSpace:
    """Define-by-run space for Optuna: suggests every domain and width dimension, sets the cost constraint."""

    constants: Mapping[str, Any]
    domains: Mapping[str, Domain]
    width_space: WidthSpace | None
    cost_model: CostModel | None

    def __call__(self, trial: Any) -> dict[str, Any]:
        """Suggest; return the constants Tune merges into the trial config."""
        sampled = {name: domain.suggest(trial, name) for name, domain in self.domains.items()}
        if self.width_space is not None:
            sampled.update(self.width_space.suggest(trial))
            flat = {**self.constants, **sampled}
            target = resolve_cost_target(unflatten(flat, "cost_target"), self.cost_model)
            if target is not None and not self.width_space.matched:
                widths = self.width_space.widths(flat)
                cost = self.cost_model.cost(widths, target.convention)
                constrain(trial, cost, target.value)
        return dict(self.constants)


def flat_constants(config: ExperimentConfig) -> tuple[dict[str, Any], dict[str, Domain]]:
    """The experiment-wide part of every trial's flat config: fixed values, and the spaces to search."""
    constants: dict[str, Any] = {
        "experiment": config.name,
        "model": str(canonical_spec(config.model)),
        "metric": config.metric,
        "resources.cpu": config.resources.cpu,
        "max_failures": config.max_failures,
    }
    if config.resources.distributed:
        constants.update(
            {
                "resources.workers": config.resources.workers,
                "resources.cpu_per_worker": config.resources.cpu_per_worker,
                "resources.gpu_per_worker": config.resources.gpu_per_worker,
                "infra_retries": config.infra_retries,
            }
        )
    domains: dict[str, Domain] = {}
    for section in ("data", "train", "cost_target", "retrain"):
        values = getattr(config, section) or {}
        c, d = split_spaces(values, section)
        constants.update(c)
        domains.update(d)
    return constants, domains


def plan_methods(config: ExperimentConfig) -> list[Study]:
    """A sweep's or a compare's studies: each method entry's, in the config's order."""
    base_constants, base_domains = flat_constants(config)
    studies: list[Study] = []
    for entry, label in zip(config.entries, config.labels(), strict=True):
        studies.extend(studies_for(config, entry, label, base_constants, base_domains))
    return studies


def artifact_context(constants: Mapping[str, Any], seed: int) -> ArtifactContext:
    """What an artifact recipe may depend on, from a study's fixed values (spaces are not part of a recipe)."""
    return ArtifactContext(
        model=str(constants["model"]),
        data={k[len("data.") :]: v for k, v in constants.items() if k.startswith("data.")},
        train={k[len("train.") :]: v for k, v in constants.items() if k.startswith("train.")},
        seed=seed,
    )


def teacher(
    config: ExperimentConfig, entry: MethodEntry, constants: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, ArtifactRecipe]]:
    """A distilling entry's loss settings, and its teacher: a path, or an artifact (an earlier label's best
    trial, or a model trained once from a recipe with the experiment's first seed unless it names one)."""
    distill = entry.distill
    settings = {"distill.alpha": distill.alpha, "distill.temperature": distill.temperature}
    source = distill.teacher
    if isinstance(source, Mapping):
        recipe = dict(source)
        seed = int(recipe.pop("seed", config.seeds[0]))
        need = trained_model(artifact_context(constants, seed), **recipe)
        return settings, {"distill.teacher": need}
    if source in config.labels():
        return settings, {"distill.teacher": ArtifactRecipe("best-trial", {"label": source})}
    return {**settings, "distill.teacher": str(Path(source).expanduser().resolve())}, {}


def method_needs(
    entry: MethodEntry, params: Mapping[str, Any], constants: Mapping[str, Any], seed: int
) -> dict[str, ArtifactRecipe]:
    """The shared artifacts a method declares for one seed, by the flat key each trial finds its path under."""
    declared = get_method(entry.name).artifacts(params, artifact_context(constants, seed))
    return {f"{ARTIFACT_PREFIX}{name}": recipe for name, recipe in declared.items()}


def studies_for(
    config: ExperimentConfig,
    entry: MethodEntry,
    label: str,
    base_constants: dict[str, Any],
    base_domains: dict[str, Domain],
    key: str | None = None,
) -> list[Study]:
    """One method entry's studies over `base_constants` (whose `model` may be a proxy's); keys start with `key`."""
    method = get_method(entry.name)
    key = key or label
    model = base_constants["model"]
    hyper_constants, hyper_domains = split_spaces(entry.hyperparameters, "method")
    if entry.retrain is not None:  # the method's own retraining modes replace the experiment's
        own_constants, own_domains = split_spaces(entry.retrain, "retrain")
        base_constants = {
            k: v for k, v in base_constants.items() if not k.startswith("retrain.")
        } | own_constants
        base_domains = {k: v for k, v in base_domains.items() if not k.startswith("retrain.")} | own_domains
    constants = {**base_constants, **hyper_constants, "method": entry.name, "label": label}
    needs: dict[str, ArtifactRecipe] = {}
    if entry.distill is not None:
        settings, needs = teacher(config, entry, constants)
        constants.update(settings)
    params = {k[len("method.") :]: v for k, v in hyper_constants.items()}
    domains = {**base_domains, **hyper_domains}
    search = entry.search or config.search
    scheduler = entry.scheduler or config.scheduler
    width_space = None
    if method.width_space is not None:
        width_space = method.width_space(
            CostModel.from_spec(model).space,
            params,
        )
    if scheduler.name == "pbt":  # PBT mutates keys that must already be in every trial's config
        defaults = {f"train.{f.name}": f.default for f in dataclasses.fields(TrainConfig)}
        for key in scheduler.hyperparam_mutations:
            if key not in constants and key not in domains:
                constants[key] = defaults[key]
    searched = any(d.kind != "grid" for d in domains.values()) or width_space is not None
    num_samples = (entry.num_samples or config.num_samples) if searched else 1
    common = {
        "label": label,
        "method": entry.name,
        "search": search,
        "scheduler": scheduler,
        "num_samples": num_samples,
        "width_space": width_space,
        "model": model,
    }
    per_seed = {seed: {**needs, **method_needs(entry, params, constants, seed)} for seed in config.seeds}
    if (
        search.name != "optuna"
        and len({tuple(sorted((k, r.key) for k, r in n.items())) for n in per_seed.values()}) > 1
    ):
        # each seed needs its own artifacts: one study per seed, so each can be handed its own
        return [
            study
            for seed in config.seeds
            for study in studies_for(
                config.model_copy(update={"seeds": [seed]}),
                entry,
                label,
                base_constants,
                base_domains,
                key=f"{key}-s{seed}",
            )
        ]
    if search.name != "optuna":
        seeds = config.seeds
        grid_seed = {"seed": Domain("grid", tuple(seeds))} if len(seeds) > 1 else {}
        fixed_seed = {} if grid_seed else {"seed": seeds[0]}
        if search.name == "grid":
            domains = {k: Domain("grid", d.values) if d.kind == "choice" else d for k, d in domains.items()}
        constants = {**constants, **fixed_seed, "study": key}
        return [
            Study(
                key=key,
                seed=seeds[0],
                constants=constants,
                domains={**domains, **grid_seed},
                needs=per_seed[seeds[0]],
                **common,
            )
        ]
    grids = {k: d for k, d in domains.items() if d.kind == "grid"}
    loose = {k: d for k, d in domains.items() if d.kind != "grid"}
    studies = []
    for seed in config.seeds:
        for values in itertools.product(*(d.values for d in grids.values())):
            picked = dict(zip(grids, values, strict=True))
            name = f"{key}-s{seed}" + "".join(f"-{k.split('.')[-1]}={v}" for k, v in picked.items())
            fixed = {**constants, **picked, "seed": seed, "study": name}
            studies.append(
                Study(
                    key=name,
                    seed=seed,
                    constants=fixed,
                    domains=loose,
                    enumerated=picked,
                    needs=per_seed[seed],
                    **common,
                )
            )
    return studies


def objectives(study: Study, metric: str) -> tuple[list[str], list[str]]:
    """The searcher's metrics and modes (one objective unless the config names several)."""
    names = list(study.search.objectives or [metric])
    return names, [OBJECTIVES[n] for n in names]


def make_searcher(study: Study, config: ExperimentConfig) -> Any:
    """Tune's variant generator, or OptunaSearch over a define-by-run space with the cost constraint."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if study.search.name != "optuna":
        return BasicVariantGenerator(random_state=study.seed, max_concurrent=study.search.max_concurrent or 0)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    samplers = {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "gp": optuna.samplers.GPSampler,
    }
    sampler = samplers[study.search.sampler](seed=study.seed)
    metrics, modes = objectives(study, config.metric)
    space = OptunaSpace(study.constants, study.domains, study.width_space, CostModel.from_spec(study.model))
    searcher = OptunaSearch(
        space=space,
        metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=sampler,
    )
    if study.search.max_concurrent:
        return ConcurrencyLimiter(searcher, max_concurrent=study.search.max_concurrent)
    return searcher


def max_epochs(study: Study) -> int:
    """The longest training any trial of the study can get (a scheduler's max_t)."""
    if "train.epochs" in study.domains:
        return int(max(study.domains["train.epochs"].candidates()))
    return int(study.constants.get("train.epochs", TrainConfig.epochs))


def make_scheduler(study: Study, config: ExperimentConfig) -> Any:
    """The configured Tune scheduler; time is the `epoch` each trial reports."""
    from ray.tune import schedulers

    cfg, metric = study.scheduler, config.metric
    mode = OBJECTIVES[metric]
    max_t = max_epochs(study)
    if cfg.name == "asha":
        return schedulers.ASHAScheduler(
            time_attr="epoch",
            metric=metric,
            mode=mode,
            max_t=max_t,
            grace_period=min(cfg.grace_period, max_t),
            reduction_factor=cfg.reduction_factor,
        )
    if cfg.name == "hyperband":
        from widthtune.platform.hyperband import HyperBand  # imports Ray Tune, as this function does

        return HyperBand(
            time_attr="epoch", metric=metric, mode=mode, max_t=max_t, reduction_factor=cfg.reduction_factor
        )
    if cfg.name == "median":
        return schedulers.MedianStoppingRule(
            time_attr="epoch",
            metric=metric,
            mode=mode,
            grace_period=cfg.grace_period,
            min_samples_required=cfg.min_samples_required,
        )
    if cfg.name == "pbt":
        mutations = {
            k: parse_domain(f"scheduler.hyperparam_mutations.{k}", v).to_tune() if is_space(v) else list(v)
            for k, v in cfg.hyperparam_mutations.items()
        }
        return schedulers.PopulationBasedTraining(
            time_attr="epoch",
            metric=metric,
            mode=mode,
            perturbation_interval=cfg.perturbation_interval,
            hyperparam_mutations=mutations,
            quantile_fraction=cfg.quantile_fraction,
            resample_probability=cfg.resample_probability,
        )
    return schedulers.FIFOScheduler()
