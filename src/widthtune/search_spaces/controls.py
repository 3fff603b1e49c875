"""Rethinking's architecture controls for a pruned width vector, each matched to the same cost.

- uniform: the base shape under one width multiplier -- what pruning every layer by the same share gives;
- guided ("Guided Pruning"): each stage's average pruned width ratio, sum(widths) / sum(base) over the
  stage's groups (for VGG, whose layers in a stage share a base width, exactly "the average number of
  channels in each layer stage"), applied to every group of that stage;
- transferred guided: the stage ratios of one model (e.g. VGG-16 pruned on CIFAR-10) applied by stage index
  to another (e.g. VGG-19), as the chapter's "Transferred Guided Pruning".

How a control is made comparable to the pruned model is `match` (MATCHES):

- `channels` (the chapter's protocol, the default of the `control` method): the ratios are used as they are,
  each group rounded to its divisor -- uniform keeps the pruned model's overall share of channels in every
  layer ("prunes the same percentage of channels in each layer"), guided each stage's average -- and the
  controls are compared with the pruned model by their parameters, as the chapter's figures are;
- `params` / `macs`: the shape is scaled by one multiplier (`match_cost`) to the pruned model's parameters
  or cost within 0.5% (`*_control` below, with the convention to match in).

Groups without a stage keep their own ratio (guided) or take the source's overall ratio (transferred).
"""

from __future__ import annotations

from collections.abc import Mapping

from widthtune.models.cost import CostModel
from widthtune.models.match import COST_TOLERANCE, CostMatch, match_cost
from widthtune.models.space import ChannelGroup, ChannelSpace
from widthtune.models.widths import Widths

StageKey = int | str
MATCHES = ("channels", "params", "macs")


def _stage_key(group: ChannelGroup) -> StageKey:
    return group.stage if group.stage is not None else group.name


def stage_ratios(widths: Widths) -> dict[StageKey, float]:
    """Each stage's channels relative to the base, sum(widths) / sum(base); unstaged groups by name."""
    totals: dict[StageKey, list[int]] = {}
    for group, width in zip(widths.space, widths.values, strict=True):
        total = totals.setdefault(_stage_key(group), [0, 0])
        total[0] += width
        total[1] += group.base
    return {key: kept / base for key, (kept, base) in totals.items()}


def channel_share(widths: Widths) -> float:
    """The share of channels the model keeps over all its groups, sum(widths) / sum(base)."""
    return sum(widths.values) / sum(group.base for group in widths.space)


def uniform_ratios(widths: Widths) -> dict[str, float]:
    """Every group at the pruned model's overall channel share: the same percentage pruned in each layer."""
    return dict.fromkeys(widths.space.names, channel_share(widths))


def guided_ratios(widths: Widths) -> dict[str, float]:
    """Every group at its stage's average kept share (unstaged groups keep their own)."""
    ratios = stage_ratios(widths)
    return {group.name: ratios[_stage_key(group)] for group in widths.space}


def transferred_ratios(source_widths: Widths, target_space: ChannelSpace) -> dict[str, float]:
    """Another model's stage shares applied by stage index (unstaged groups: the source's overall share)."""
    ratios = stage_ratios(source_widths)
    missing = sorted({g.stage for g in target_space if g.stage is not None and g.stage not in ratios})
    if missing:
        stages = sorted(k for k in ratios if isinstance(k, int))
        raise ValueError(
            f"source_widths: the source model has no stage {', '.join(map(str, missing))} "
            f"(its stages: {', '.join(map(str, stages)) or 'none'}); transfer needs the same stage indices"
        )
    overall = channel_share(source_widths)
    return {g.name: ratios[g.stage] if g.stage is not None else overall for g in target_space}


def at_ratios(space: ChannelSpace, ratios: Mapping[str, float]) -> Widths:
    """The `channels` protocol: each group at base x its ratio, rounded to its divisor, no cost matching."""
    return Widths.from_ratios(space, {name: ratios[name] for name in space.names})


def _match(
    space: ChannelSpace, ratios: Mapping[str, float], cost_model: CostModel, target: float, convention: str
) -> CostMatch:
    if cost_model.space != space:
        raise ValueError("cost_model: it prices a different channel space than the control is built for")
    shape = {group.name: group.base * ratios[group.name] for group in space}
    return match_cost(shape, target, cost_model, convention=convention, tolerance=COST_TOLERANCE)


def uniform_control(
    space: ChannelSpace, cost_model: CostModel, target: float, convention: str = "macs"
) -> CostMatch:
    """The base shape under one multiplier, at the target cost."""
    return _match(space, dict.fromkeys(space.names, 1.0), cost_model, target, convention)


def guided_control(
    widths: Widths, cost_model: CostModel, target: float, convention: str = "macs"
) -> CostMatch:
    """Every group takes its stage's average pruned ratio, then one multiplier meets the target."""
    return _match(widths.space, guided_ratios(widths), cost_model, target, convention)


def transferred_guided(
    source_widths: Widths,
    target_space: ChannelSpace,
    cost_model: CostModel,
    target: float,
    convention: str = "macs",
) -> CostMatch:
    """Another model's stage ratios applied to `target_space` by stage index, then matched to the target."""
    return _match(
        target_space, transferred_ratios(source_widths, target_space), cost_model, target, convention
    )
