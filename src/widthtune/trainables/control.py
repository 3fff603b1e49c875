"""`control`: Rethinking's architecture controls for a pruning method, each at the pruned model's cost.

The trial runs the source method's search (same seed, so the same pruned model as the source's own trial),
then trains one of its controls from scratch: `uniform` (the base shape under one multiplier) or `guided`
(each stage's average pruned width). With `source_model` (and optionally `source_data`) the source prunes
another model or dataset and its stage pattern is applied here: transferred guided pruning (e.g. VGG-16 on one
dataset guiding VGG-19 on another).

How the control is made comparable (`match`): with a cost target, the control is scaled to it; otherwise
`channels` (the default, the chapter's protocol) keeps the ratios as they are -- uniform prunes the pruned
model's overall share of channels from every layer, guided gives every layer its stage's average -- and the
control is compared with the pruned model by its parameters; `params` or `macs` scales the shape by one
multiplier to the pruned model's share of its base parameters or cost (in the task's convention), applied to
this model's base.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from widthtune.models.cost import CostModel
from widthtune.models.registry import canonical_spec
from widthtune.search_spaces.controls import (
    MATCHES,
    at_ratios,
    channel_share,
    guided_control,
    guided_ratios,
    stage_ratios,
    transferred_guided,
    transferred_ratios,
    uniform_control,
)
from widthtune.trainables.artifacts import ArtifactContext, ArtifactRecipe
from widthtune.trainables.method import Method
from widthtune.trainables.registry import get_method, register
from widthtune.trainables.task import SearchResult, Task
from widthtune.training.datasets import DataSpec, load_dataset

KINDS = ("uniform", "guided")
DEFAULTS: dict[str, Any] = {
    "kind": "guided",
    "match": "channels",
    "source": "slimming",
    "source_params": {},
    "source_model": None,
    "source_data": None,
}


def _source_task(task: Task, params: Mapping[str, Any]) -> Task:
    """The task the source method prunes: this one, or another model and/or dataset."""
    spec = canonical_spec(params["source_model"]) if params["source_model"] else task.model
    cost_model = task.cost_model if spec == task.model else CostModel.from_spec(spec)
    target = task.cost_target
    if target is not None and cost_model is not task.cost_model:
        target = target / task.cost_model.base()[task.convention] * cost_model.base()[task.convention]
    data = load_dataset(DataSpec(**params["source_data"])) if params["source_data"] else task.data
    return replace(
        task,
        model=spec,
        data=data,
        cost_model=cost_model,
        cost_target=target,
        params=dict(params["source_params"] or {}),
    )


def search(task: Task) -> SearchResult:
    """Prune with the source method, then build the control by the chapter's protocol or at the same cost."""
    params = {**DEFAULTS, **task.params}
    source = _source_task(task, params)
    pruned = get_method(params["source"]).search(source)
    match = "cost_target" if task.cost_target is not None else str(params["match"])
    multiplier = 1.0
    if match == "channels":
        if params["kind"] == "uniform":
            ratios = dict.fromkeys(task.space.names, channel_share(pruned.widths))
        elif source.model == task.model:
            ratios = guided_ratios(pruned.widths)
        else:
            ratios = transferred_ratios(pruned.widths, task.space)
        widths = at_ratios(task.space, ratios)
    else:
        convention = "params" if match == "params" else task.convention
        share = source.cost_model.cost(pruned.widths, convention) / source.cost_model.base()[convention]
        target = (
            task.cost_target if task.cost_target is not None else share * task.cost_model.base()[convention]
        )
        if params["kind"] == "uniform":
            matched = uniform_control(task.space, task.cost_model, target, convention)
        elif source.model == task.model:
            matched = guided_control(pruned.widths, task.cost_model, target, convention)
        else:
            matched = transferred_guided(pruned.widths, task.space, task.cost_model, target, convention)
        widths, multiplier = matched.widths, matched.multiplier
    info = {
        "kind": params["kind"],
        "match": match,
        "source": params["source"],
        "source_model": str(source.model),
        "source_channel_share": channel_share(pruned.widths),
        "source_params": float(source.cost_model.cost(pruned.widths, "params")),
        "source_stage_ratios": {str(k): v for k, v in stage_ratios(pruned.widths).items()},
        "multiplier": multiplier,
    }
    return SearchResult(
        widths,
        search_flops=pruned.search_flops,
        match_target=False,
        info=info,
        bn_gamma_init=pruned.bn_gamma_init,  # trained from scratch as the source's own models are
    )


def check(params: Mapping[str, Any]) -> None:
    """Kind, source method and its settings, source model and data are valid."""
    merged = {**DEFAULTS, **params}
    if merged["kind"] not in KINDS:
        raise ValueError(f"method.kind: {merged['kind']!r} is not allowed; choose one of: {', '.join(KINDS)}")
    if merged["match"] not in MATCHES:
        raise ValueError(
            f"method.match: {merged['match']!r} is not allowed; choose one of: {', '.join(MATCHES)}"
        )
    source = get_method(str(merged["source"]))
    if not source.prunes:
        raise ValueError(
            f"method.source: {merged['source']!r} prunes nothing; a control needs a pruning method as its source"
        )
    if not isinstance(merged["source_params"] or {}, Mapping):
        raise ValueError(f"method.source_params: {merged['source_params']!r} is not a mapping of settings")
    source.check(dict(merged["source_params"] or {}))
    if merged["source_model"]:
        canonical_spec(merged["source_model"])
    if merged["source_data"] is not None:
        if not isinstance(merged["source_data"], Mapping):
            raise ValueError(f"method.source_data: {merged['source_data']!r} is not a data section")
        DataSpec(**merged["source_data"])


def artifacts(params: Mapping[str, Any], context: ArtifactContext) -> Mapping[str, ArtifactRecipe]:
    """The source method's shared artifacts (a pretrained baseline), when it prunes this trial's model and data."""
    merged = {**DEFAULTS, **params}
    if merged["source_model"] or merged["source_data"] is not None:
        return {}  # another model or dataset: the source trains what it needs inside the trial
    return get_method(str(merged["source"])).artifacts(dict(merged["source_params"] or {}), context)


METHOD = register(
    Method(
        name="control",
        search=search,
        defaults=DEFAULTS,
        summary="Rethinking's controls: uniform or (transferred) guided pruning at a pruning method's cost",
        check=check,
        artifacts=artifacts,
    )
)
