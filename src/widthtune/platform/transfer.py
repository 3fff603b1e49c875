"""The `transfer` experiment: optimise widths on proxies, extrapolate them, train them on the target.

Phase one: every method on every projection's proxy (role `proxy`), and the baselines on the target — each
method optimised directly (role `direct`) and the uniform model at the same cost (role `baseline`). Phase two:
per method, one study on the target whose grid is a shared artifact (`transfer-points`), computed once from
phase one's results: for each projection, extrapolation rule and seed, the proxy trial the method hands in
(best validation accuracy) extrapolated, matched to the target's cost and trained from scratch (role
`target`), with its source trial, projection, rule and overhead (formula and measured) in its config.
The formula prices the proxy as built (its whole blocks, `Projection.built_depth_ratio`). Every method that
declares `optimises_widths` can be transferred; without a `cost_target` the study runs at the target's own
cost (`{ratio: 1.0}`: equal FLOPs, the paper's eq. 1), the proxies at the same ratio of theirs. A
finished artifact is never recomputed, so a resumed experiment trains exactly the same points.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from widthtune.models.cost import CostModel
from widthtune.models.registry import canonical_spec, channel_space, resolve_options
from widthtune.models.widths import Widths
from widthtune.platform.config import ExperimentConfig, MethodEntry
from widthtune.platform.studies import Study, flat_constants, studies_for
from widthtune.results.roles import BASELINE, DIRECT, PROXY, TARGET
from widthtune.results.selection import select, spent
from widthtune.search_spaces.cost_target import resolve_cost_target
from widthtune.search_spaces.projections import Projection, transfer_widths
from widthtune.trainables.artifacts import ArtifactRecipe
from widthtune.trainables.trial import BUNDLE_KEY
from widthtune.training.loop import TrainConfig

# the artifact kind that holds one method's transfer points
POINTS = "transfer-points"


def proxy_key(label: str, projection: Projection) -> str:
    """The study (and key prefix) of one method on one proxy."""
    return f"{label}-proxy-{projection.label}"


def target_resolution(config: ExperimentConfig) -> int:
    """The target model's input resolution (the formula's reference)."""
    return int(resolve_options(config.model)["resolution"])


def epoch_ratio(config: ExperimentConfig) -> float:
    """Proxy epochs over target epochs (1 unless `transfer.proxy_train` changes them)."""
    target = int(config.train.get("epochs", TrainConfig.epochs))
    proxy = int({**config.train, **config.transfer.proxy_train}.get("epochs", target))
    return proxy / target


def _proxy_cost_target(config: ExperimentConfig) -> dict[str, Any]:
    """The target's cost target as a ratio of its base model, so every proxy is held to the same ratio."""
    if not config.cost_target:
        return {}
    cost_model = CostModel.from_spec(config.model)
    target = resolve_cost_target(config.cost_target, cost_model)
    ratio = target.value / cost_model.base()[target.convention]
    return {"cost_target.ratio": ratio, "cost_target.convention": target.convention}


def _proxy_constants(
    config: ExperimentConfig, base: Mapping[str, Any], projection: Projection
) -> dict[str, Any]:
    """The target's flat constants with the proxy's model, data, recipe and cost ratio, tagged with the projection."""
    constants = {k: v for k, v in base.items() if not k.startswith(("data.", "cost_target."))}
    constants["model"] = str(projection.model(config.model))
    constants.update({f"data.{k}": v for k, v in projection.data(config.data).items()})
    constants.update({f"train.{k}": v for k, v in config.transfer.proxy_train.items()})
    constants.update(_proxy_cost_target(config))
    constants.update(
        {
            "role": PROXY,
            "transfer.projection": projection.label,
            "transfer.overhead_ratio": projection.overhead_ratio(
                target_resolution(config), epoch_ratio(config), projection.built_depth_ratio(config.model)
            ),
        }
    )
    return constants


def plan_transfer(config: ExperimentConfig) -> list[Study]:
    """Every method on every proxy, the direct and uniform baselines on the target, then the transfers."""
    base, domains = flat_constants(config)
    studies: list[Study] = []
    for entry, label in zip(config.entries, config.labels(), strict=True):
        for projection in config.transfer.plan():
            constants = _proxy_constants(config, base, projection)
            studies += studies_for(config, entry, label, constants, domains, key=proxy_key(label, projection))
    baselines = config.transfer.baselines
    if "direct" in baselines:
        for entry, label in zip(config.entries, config.labels(), strict=True):
            constants = {**base, "role": DIRECT}
            studies += studies_for(config, entry, label, constants, domains, key=f"{label}-direct")
    if "uniform" in baselines:
        constants = {**base, "role": BASELINE}
        studies += studies_for(
            config, MethodEntry(name="uniform"), "uniform", constants, domains, "uniform-baseline"
        )
    return studies + target_studies(config)


def _cells(
    rows: Iterable[dict[str, Any]], role: str
) -> dict[tuple[str, str | None, int], list[dict[str, Any]]]:
    cells: dict[tuple[str, str | None, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["role"] == role:
            cells[(row["label"], row.get("projection"), int(row["seed"]))].append(row)
    return cells


def transfer_points(
    config: ExperimentConfig, label: str, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """One method's phase-two trials (extrapolated, cost-matched widths with their provenance), and the skips."""
    cost_model = CostModel.from_spec(config.model)
    target = resolve_cost_target(config.cost_target, cost_model)
    value = target.value if target else cost_model.base().macs
    convention = target.convention if target else "macs"
    proxies = _cells(rows, PROXY)
    points: list[dict[str, Any]] = []
    skipped: list[str] = []
    resolution, epochs = target_resolution(config), epoch_ratio(config)
    for projection in config.transfer.plan():
        formula = projection.overhead_ratio(resolution, epochs, projection.built_depth_ratio(config.model))
        for seed in config.seeds:
            trials = proxies.get((label, projection.label, seed), [])
            chosen = select(trials)
            if chosen is None or not chosen["widths"]:
                skipped.append(
                    f"{label} on {projection.label}, seed {seed}: no completed proxy trial "
                    f"({len(trials)} stored)"
                )
                continue
            proxy_space = channel_space(chosen["model"])
            widths = Widths.from_mapping(
                proxy_space, dict(zip(chosen["group_names"], chosen["widths"], strict=True))
            )
            flops, seconds = spent(trials)
            for rule in config.transfer.extrapolation:
                matched = transfer_widths(widths, cost_model, value, rule=rule, convention=convention)
                points.append(
                    {
                        "seed": seed,
                        "role": TARGET,
                        "method.widths": matched.widths.as_dict(),
                        "transfer.projection": projection.label,
                        "transfer.extrapolation": rule,
                        "transfer.source_trial": chosen["trial_key"],
                        "transfer.source_run_id": chosen["mlflow_run_id"],
                        "transfer.proxy_model": chosen["model"],
                        "transfer.multiplier": matched.multiplier,
                        "transfer.overhead_ratio": formula,
                        "transfer.overhead_flops": flops,
                        "transfer.overhead_seconds": seconds,
                    }
                )
    return points, skipped


def target_studies(config: ExperimentConfig) -> list[Study]:
    """Phase two: per method, one study on the target whose grid is its transfer points (each with its seed)."""
    base, _ = flat_constants(config)
    studies = []
    for entry, label in zip(config.entries, config.labels(), strict=True):
        search = entry.search or config.search
        constants = {**base, "method": "given", "label": label, "role": TARGET, "study": f"{label}-transfer"}
        studies.append(
            Study(
                key=f"{label}-transfer",
                label=label,
                method="given",
                model=str(canonical_spec(config.model)),
                search=search.model_copy(update={"name": "random"}),
                scheduler=config.scheduler.model_copy(update={"name": "fifo"}),
                num_samples=1,
                seed=config.seeds[0],
                constants=constants,
                domains={},
                needs={BUNDLE_KEY: ArtifactRecipe(POINTS, {"label": label})},
            )
        )
    return studies
