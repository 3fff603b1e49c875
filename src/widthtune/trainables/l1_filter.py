"""`l1_filter`: Li et al.'s L1-norm filter pruning -- predefined per-layer ratios on a pretrained model.

The paper prunes a fully trained model, so by default (`pretrain_epochs: null`) the base model is the shared
`pretrained` artifact: trained once per experiment and seed on the full recipe, and read by every trial
(its training FLOPs count as search cost). An integer `pretrain_epochs` trains the base model (seed
task.seed) inside the trial for that many epochs instead (0: prune the random initialisation). Then each
prunable group drops its `ratio` of filters with the smallest L1 norms. The target widths are thus fixed by
the ratios (a "predefined" architecture in Rethinking's terms); only which channels survive depends on the
weights.

- `preset` names one of Li et al.'s pruned models (`vgg16-a`, `resnet56-a`, `resnet56-b`, `resnet110-a`,
  `resnet110-b`, `resnet34-a`, `resnet34-b`; see `l1_presets`): its groups, per-stage ratios and skipped
  blocks; it replaces `ratio`, and the model must be the one it prunes;
- `ratio` (0.5 when neither is given) is one number for every prunable group, a list with one number per
  prunable group (in channel-space order), or a mapping group -> ratio (groups left out keep every channel;
  a nested mapping, as a flattened config delivers `ratio.stage1.block1.mid`, is read back into dotted
  group names);
- a filter's score is the sum, over the group's conv (and linear) output members, of each member's L1 norm
  for that output channel: a residual stream's channel is written by several convs and is kept or removed
  in all of them at once, so its importance is the total weight mass that writes it;
- a group keeps `int(base x (1 - ratio))` filters, floored as the reference code does (then down to the
  group's divisor), never below its minimum (never 0), the top-scored ones.

Streams routed by a zero-pad (option A) shortcut are not prunable (see models.inherit): there, as Li et al.
do for CIFAR ResNets, prune the blocks' inner (`mid`) groups.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from widthtune.models.inherit import follow_sources, kept_widths, pad_linked_groups, top_channels
from widthtune.models.registry import materialize
from widthtune.models.space import ChannelSpace
from widthtune.models.widths import Widths, smallest_width
from widthtune.trainables.artifacts import ArtifactContext, ArtifactRecipe, trained_model
from widthtune.trainables.l1_presets import PRESETS, get_preset
from widthtune.trainables.method import Method
from widthtune.trainables.registry import register
from widthtune.trainables.retraining import rescale_recipe
from widthtune.trainables.task import SearchResult, Task, pruned_result
from widthtune.training.loop import train

DEFAULTS: dict[str, Any] = {"ratio": None, "preset": None, "pretrain_epochs": None}
DEFAULT_RATIO = 0.5  # when neither a ratio nor a preset is given
PRETRAINED = "pretrained"  # the shared artifact: the base model trained on the full recipe


def filter_norms(
    model: nn.Module, space: ChannelSpace, exclude: frozenset[str] = frozenset()
) -> dict[str, Tensor]:
    """Per prunable group, each output channel's L1 norm summed over the group's conv/linear writers."""
    modules = dict(model.named_modules())
    norms: dict[str, Tensor] = {}
    for group in space:
        if group.name in exclude:
            continue
        writers = [
            modules[m.path]
            for m in group.members
            if m.kind == "out" and isinstance(modules.get(m.path), nn.Conv2d | nn.Linear)
        ]
        if writers:
            per_writer = [w.weight.detach().abs().float().cpu().flatten(1).sum(1) for w in writers]
            norms[group.name] = torch.stack(per_writer).sum(0)
    return norms


def flatten_ratio(value: Any, prefix: str = "") -> Any:
    """A nested mapping (a flattened config read back) as {dotted group name: ratio}; other values unchanged."""
    if not isinstance(value, Mapping):
        return value
    flat: dict[str, Any] = {}
    for key, inner in value.items():
        name = f"{prefix}{key}"
        if isinstance(inner, Mapping):
            flat.update(flatten_ratio(inner, f"{name}."))
        else:
            flat[name] = inner
    return flat


def _gather(params: Mapping[str, Any]) -> dict[str, Any]:
    """DEFAULTS and params, with `ratio.<group>` keys folded into one ratio mapping."""
    merged = {**DEFAULTS, **{k: v for k, v in params.items() if not str(k).startswith("ratio.")}}
    dotted = {str(k)[len("ratio.") :]: v for k, v in params.items() if str(k).startswith("ratio.")}
    if dotted:
        merged["ratio"] = dotted
    merged["ratio"] = flatten_ratio(merged["ratio"])
    if merged["ratio"] is None and merged["preset"] is None:
        merged["ratio"] = DEFAULT_RATIO
    return merged


def _check_one(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 <= value < 1):
        raise ValueError(f"{field}: {value!r} is not allowed; choose a number in [0, 1)")


def group_ratios(space: ChannelSpace, prunable: list[str], ratio: Any) -> dict[str, float]:
    """Each prunable group's ratio from a number, a list (one per prunable group) or a mapping."""
    ratio = flatten_ratio(ratio)
    if isinstance(ratio, Mapping):
        for name, value in ratio.items():
            if name not in space:
                raise ValueError(
                    f"method.ratio.{name}: no such channel group; prunable groups: {', '.join(prunable[:8])}"
                    f"{' ...' if len(prunable) > 8 else ''}"
                )
            if name not in prunable:
                raise ValueError(
                    f"method.ratio.{name}: this group cannot be pruned (no conv writes it, or a zero-pad "
                    "shortcut routes it by position)"
                )
            _check_one(f"method.ratio.{name}", value)
        return {name: float(ratio.get(name, 0.0)) for name in prunable}
    if isinstance(ratio, list | tuple):
        if len(ratio) != len(prunable):
            raise ValueError(
                f"method.ratio: a list needs one ratio per prunable group ({len(prunable)}: "
                f"{', '.join(prunable[:8])}{' ...' if len(prunable) > 8 else ''}), got {len(ratio)}"
            )
        for name, value in zip(prunable, ratio, strict=True):
            _check_one(f"method.ratio.{name}", value)
        return {name: float(value) for name, value in zip(prunable, ratio, strict=True)}
    _check_one("method.ratio", ratio)
    return dict.fromkeys(prunable, float(ratio))


def prune_by_ratios(
    space: ChannelSpace, scores: Mapping[str, Tensor], ratios: Mapping[str, float]
) -> tuple[Widths, dict[str, tuple[int, ...]]]:
    """Each group keeps int(base x (1 - ratio)) top-scored filters, down to its divisor, at least its minimum."""
    kept, values = {}, []
    for group in space:
        if group.name not in scores:
            kept[group.name] = tuple(range(group.base))
            values.append(group.base)
            continue
        kept_filters = int(group.base * (1 - ratios.get(group.name, 0.0)))  # floored, as the reference
        width = min(group.base, max(smallest_width(group), kept_filters // group.divisor * group.divisor))
        kept[group.name] = top_channels(scores[group.name], width)
        values.append(width)
    return Widths(space, tuple(values)), kept


def pretrained_model(task: Task, epochs: int | None) -> tuple[nn.Module, int]:
    """The base model pruning starts from, and the training images it took: the shared artifact, or trained here."""
    model = materialize(task.model, seed=task.seed)
    if epochs is None and PRETRAINED in task.artifacts:
        model.load_state_dict(torch.load(task.artifacts[PRETRAINED], map_location="cpu", weights_only=True))
        return model, task.train.epochs * int(task.data.train_y.shape[0])
    epochs = task.train.epochs if epochs is None else epochs  # called without the platform: the full recipe
    if epochs == 0:
        return model, 0
    return model, train(model, task.data, rescale_recipe(task.train, epochs)).final.images_seen


def resolve_ratios(space: ChannelSpace, prunable: list[str], params: Mapping[str, Any]) -> dict[str, float]:
    """Each prunable group's ratio, from the preset or from `ratio`."""
    if params["preset"] is not None:
        preset = get_preset(str(params["preset"]))
        preset.check(space)
        return group_ratios(space, prunable, preset.ratios(space))
    return group_ratios(space, prunable, params["ratio"])


def search(task: Task) -> SearchResult:
    """Take the pretrained base model, rank filters by L1 norm, prune each group by its ratio, inherit weights."""
    check(task.params)
    params = _gather(task.params)
    space = task.space
    model, images = pretrained_model(task, params["pretrain_epochs"])
    model.to("cpu").eval()
    scores = filter_norms(model, space, exclude=pad_linked_groups(model, space))
    ratios = resolve_ratios(space, list(scores), params)
    widths, kept = prune_by_ratios(space, scores, ratios)
    unranked = set(space.names) - set(scores)
    kept = follow_sources(model, space, kept, unranked)  # a channel selection follows the stream it reads
    widths = kept_widths(space, kept)
    info = {
        "preset": params["preset"],
        "ratios": ratios,
        "pretrain_epochs": task.train.epochs
        if params["pretrain_epochs"] is None
        else params["pretrain_epochs"],
        "pretrained_artifact": PRETRAINED in task.artifacts and params["pretrain_epochs"] is None,
        "images_seen": images,
        "cost": float(task.cost_model.cost(widths, task.convention)),
        "convention": task.convention,
        "fixed_groups": sorted(set(space.names) - set(scores)),
    }
    return pruned_result(task, widths, model, space, kept, images, info)


def artifacts(params: Mapping[str, Any], context: ArtifactContext) -> Mapping[str, ArtifactRecipe]:
    """The base model trained once on the full recipe, unless the trial pretrains for its own epochs."""
    if _gather(params)["pretrain_epochs"] is not None:
        return {}
    return {PRETRAINED: trained_model(context)}


def check_model(params: Mapping[str, Any], space: ChannelSpace) -> None:
    """A preset is for one model: its prunable layers per stage must be this model's."""
    preset = _gather(params)["preset"]
    if preset is not None:
        get_preset(str(preset)).check(space)


def check(params: Mapping[str, Any]) -> None:
    """A known preset or ratios in [0, 1) (one, a list or a mapping), pretrain_epochs >= 0 or null."""
    merged = _gather(params)
    epochs = merged["pretrain_epochs"]
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0):
        raise ValueError(
            f"method.pretrain_epochs: {epochs!r} is not allowed; choose an integer >= 0 "
            "(or null: the shared baseline trained on the full recipe)"
        )
    preset = merged["preset"]
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ValueError(
                f"method.preset: {preset!r} is not a preset; choose one of: {', '.join(PRESETS)}"
            )
        if merged["ratio"] is not None:
            raise ValueError("method.ratio: a preset sets the ratios; give either preset or ratio, not both")
        return
    ratio = merged["ratio"]
    if isinstance(ratio, Mapping):
        for name, value in ratio.items():
            _check_one(f"method.ratio.{name}", value)
    elif isinstance(ratio, list | tuple):
        if not ratio:
            raise ValueError("method.ratio: an empty list is not allowed; give one ratio per prunable group")
        for i, value in enumerate(ratio):
            _check_one(f"method.ratio[{i}]", value)
    else:
        _check_one("method.ratio", ratio)


METHOD = register(
    Method(
        name="l1_filter",
        search=search,
        defaults=DEFAULTS,
        summary="Li et al. L1-norm filter pruning: predefined per-group ratios on a pretrained model, kept weights",
        check=check,
        keeps_weights=True,
        prunes=True,
        artifacts=artifacts,
        widest=lambda params: 1.0,
        check_model=check_model,
    )
)
