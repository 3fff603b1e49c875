"""`slimming`: Network Slimming -- L1-sparsify BN gammas while training, then prune by one global threshold.

The base model (seed task.seed) starts with every BN gamma at `gamma_init` (0.5) and trains on the task's
recipe (stretched to `sparsity_epochs`) with lam x sum |gamma| added to the loss (autograd gives the
subgradient sign(gamma)). Channels are then ranked across all groups at once:

- a channel's score is the mean |gamma| over the BNs that see its group (a BN on concatenated features, as
  in DenseNet, contributes its slice for the group). A plain conv group has one BN; a
  residual stream has one BN per block writing into it (stem, each block's last BN, projection BNs), and
  since the stream's channels are kept or removed together, the mean over those BNs is the one number that
  says how much the whole stream uses the channel;
- the lowest-scored channels go first, globally; a group that reaches its smallest legal width (never 0)
  stops losing channels and the threshold moves on to the others, so a ratio is met as closely as whole
  channels allow (up to divisor rounding where a group's divisor is above 1);
- `prune: ratio` removes round(ratio x prunable BN channels), counted per BN layer as the reference code
  counts them: removing a channel of a stream written by k BNs removes k BN channels (on a plain net, one
  group is one BN, so BN channels are channels); `prune: cost` bisects the number of removed
  channels (the threshold) to the least that brings the cost to at most task.cost_target; when that last
  channel overshoots by more than 0.5%, the best-scored removed channels that still fit are put back, so the
  cost lands within 0.5% below the target when integer widths allow (else divisor steps up, or up in one
  group and down in another, that land within 0.5%, even slightly above; both are `models.match.refine_widths`);
- widths are rounded to each group's divisor by keeping the group's top-scored channels.

Groups without a BN, and streams routed by a zero-pad (option A) shortcut, are not pruned (see
models.inherit). The result carries the kept indices and the sparsity-trained weights cut to them, and (with
`scratch_gamma`, the default) asks that a model trained from scratch at the found widths start its BN gammas
at `gamma_init` too, as the reference code's models are all built with gamma 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from widthtune.models.cost import CostModel
from widthtune.models.inherit import pad_linked_groups, top_channels
from widthtune.models.initialization import fill_bn_gamma
from widthtune.models.match import COST_TOLERANCE, MovePriority, refine_widths
from widthtune.models.registry import materialize
from widthtune.models.space import ChannelSpace
from widthtune.models.spec import ModelSpec
from widthtune.models.widths import Widths, round_width, smallest_width
from widthtune.trainables.hyperparameters import is_real
from widthtune.trainables.method import Method
from widthtune.trainables.registry import register
from widthtune.trainables.retraining import rescale_recipe
from widthtune.trainables.task import SearchResult, Task, pruned_result
from widthtune.training.loop import train

DEFAULTS: dict[str, Any] = {
    "lam": None,  # None: 1e-4 for VGG, 1e-5 otherwise (Network Slimming)
    "gamma_init": 0.5,
    "sparsity_epochs": None,  # None: the recipe's epochs, as the paper sparsity-trains the full schedule
    "ratio": None,  # None: 0.7 for VGG (VGG-19 CIFAR-10), 0.4 otherwise (PreResNet-164)
    "prune": "auto",  # auto: ratio if one is given, else the cost target, else the default ratio
    "scratch_gamma": True,  # scratch retraining starts BN gammas at gamma_init, as the reference's models do
}
PRUNE_MODES = ("auto", "ratio", "cost")
SMALL_GAMMA = 1e-2  # info reports the share of gammas below this, a direct read-out of the sparsity
BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class Selection:
    """A global pruning decision: widths, kept channels per group, how many were removed, at what score."""

    widths: Widths
    kept: dict[str, tuple[int, ...]]
    pruned: int
    prunable: int
    threshold: float | None

    @property
    def ratio(self) -> float:
        """Fraction of prunable channels removed."""
        return (self.pruned / self.prunable) if self.prunable else 0.0


def is_vgg(spec: ModelSpec) -> bool:
    """VGG-like models take Network Slimming's VGG defaults."""
    return "vgg" in f"{spec.family}:{spec.target or ''}".lower()


def bn_members(
    model: nn.Module, space: ChannelSpace, exclude: frozenset[str] = frozenset()
) -> dict[str, list[Tensor]]:
    """Per prunable group, the gamma of every BN that sees it: the group's slice of a BN on concatenated
    features (DenseNet's, Network Slimming's per-input-slice gammas), else the BN's whole gamma."""
    modules = dict(model.named_modules())
    members: dict[str, list[Tensor]] = {}
    for (path, kind), parts in space.layouts().items():
        module = modules.get(path)
        if kind == "param" or not isinstance(module, BN) or module.weight is None:
            continue
        offset = 0
        for index, count in parts:
            name = space.groups[index].name if index is not None else None
            if name is not None and name not in exclude:
                members.setdefault(name, []).append(module.weight[offset : offset + count])
            offset += count
    return {group.name: members[group.name] for group in space if group.name in members}


def bn_scores(
    model: nn.Module, space: ChannelSpace, exclude: frozenset[str] = frozenset()
) -> dict[str, Tensor]:
    """Per prunable group, each channel's mean |gamma| over the BNs that see it."""
    return {
        name: torch.stack([gamma.detach().abs().float().cpu() for gamma in gammas]).mean(0)
        for name, gammas in bn_members(model, space, exclude).items()
    }


def pruning_sequence(space: ChannelSpace, scores: Mapping[str, Tensor]) -> list[tuple[str, int, float]]:
    """Channels in the order a rising global threshold removes them, skipping those a group's floor protects.

    Ties break by group order, then channel index, so the sequence is deterministic.
    """
    entries = sorted(
        (float(value), space.index(name), channel)
        for name, values in scores.items()
        for channel, value in enumerate(values.tolist())
    )
    room = {name: space[name].base - smallest_width(space[name]) for name in scores}
    sequence = []
    for value, position, channel in entries:
        name = space.groups[position].name
        if room[name] > 0:
            room[name] -= 1
            sequence.append((name, channel, value))
    return sequence


def _selection(
    space: ChannelSpace, scores: Mapping[str, Tensor], values: list[int], threshold: float | None
) -> Selection:
    """Kept channels for per-group widths: each group's top-scored channels."""
    widths = Widths(space, tuple(values))
    kept = {
        g.name: top_channels(scores[g.name], widths[g.name]) if g.name in scores else tuple(range(g.base))
        for g in space
    }
    prunable = sum(space[name].base for name in scores)
    pruned = sum(space[name].base - widths[name] for name in scores)
    return Selection(widths, kept, pruned, prunable, threshold)


def _widths_after(
    space: ChannelSpace, scores: Mapping[str, Tensor], sequence: list[tuple[str, int, float]], count: int
) -> list[int]:
    removed: dict[str, int] = {}
    for name, _, _ in sequence[:count]:
        removed[name] = removed.get(name, 0) + 1
    return [
        min(g.base, round_width(g.base - removed.get(g.name, 0), g)) if g.name in scores else g.base
        for g in space
    ]


def select(
    space: ChannelSpace, scores: Mapping[str, Tensor], sequence: list[tuple[str, int, float]], count: int
) -> Selection:
    """Remove the first `count` channels of the sequence, round each group to its divisor by score, keep the rest."""
    threshold = sequence[count - 1][2] if count > 0 else None
    return _selection(space, scores, _widths_after(space, scores, sequence, count), threshold)


def prune_to_ratio(
    space: ChannelSpace,
    scores: Mapping[str, Tensor],
    ratio: float,
    bn_layers: Mapping[str, int] | None = None,
) -> Selection:
    """Remove round(ratio x prunable BN channels), as far as group floors allow.

    `bn_layers` is each group's number of BN layers (default 1): a channel of a group written by k BNs is k BN
    channels. The count removed is the one whose BN channels come nearest the goal (the fewer on a tie).
    """
    sequence = pruning_sequence(space, scores)
    layers = {name: (bn_layers or {}).get(name, 1) for name in scores}
    goal = math.floor(ratio * sum(space[name].base * layers[name] for name in scores) + 0.5)
    removed, best, best_gap = 0, 0, goal
    for count, (name, _, _) in enumerate(sequence, start=1):
        removed += layers[name]
        if abs(removed - goal) < best_gap:
            best, best_gap = count, abs(removed - goal)
        if removed >= goal:
            break
    return select(space, scores, sequence, best)


def prune_to_cost(
    space: ChannelSpace,
    scores: Mapping[str, Tensor],
    cost_model: CostModel,
    target: float,
    convention: str = "macs",
    tolerance: float = COST_TOLERANCE,
) -> Selection:
    """The fewest removals (bisected) whose cost is at most `target`; removing channels never raises the cost.

    When the last removal overshoots by more than `tolerance` (one expensive channel), the best-scored
    removed channels that still fit under the target are put back, one divisor step at a time; if the cost is
    still more than `tolerance` below, the closest divisor steps up (or up in one group and down in another)
    are taken where they land within `tolerance` of the target, even slightly above it (else it stays below).
    """
    sequence = pruning_sequence(space, scores)

    def cost(count: int) -> float:
        return float(cost_model.cost(np.asarray(_widths_after(space, scores, sequence, count)), convention))

    if cost(len(sequence)) > target:
        raise ValueError(
            f"cost_target: {target:,.0f} {convention} is below {cost(len(sequence)):,.0f}, the cheapest model "
            "pruning can reach (every prunable group at its minimum width)"
        )
    low, high = 0, len(sequence)  # invariant: cost(high) <= target; cost(low - 1) > target
    while low < high:
        middle = (low + high) // 2
        if cost(middle) <= target:
            high = middle
        else:
            low = middle + 1
    values = np.asarray(_widths_after(space, scores, sequence, high), dtype=np.int64)
    if cost(high) < target * (1 - tolerance):
        lower = [smallest_width(g) if g.name in scores else g.base for g in space]
        upper = [g.base for g in space]
        # tolerance 0: put back the best-scored removed channels while one more divisor step still fits
        values = refine_widths(
            values,
            target,
            cost_model,
            convention,
            tolerance=0.0,
            lower=lower,
            upper=upper,
            pairs=False,
            under_target=True,
            priority=_next_channel_score(space, scores),
        ).values
        stepped = refine_widths(
            values, target, cost_model, convention, tolerance=tolerance, lower=lower, upper=upper
        )
        if abs(stepped.cost - target) <= tolerance * target:  # else stay under the target
            values = stepped.values
    return _selection(space, scores, [int(v) for v in values], sequence[high - 1][2] if high > 0 else None)


def _next_channel_score(space: ChannelSpace, scores: Mapping[str, Tensor]) -> MovePriority:
    """A single step up ranks by the score of the best removed channel of its group (the next one put back)."""
    ranked = {space.index(name): torch.sort(s, descending=True).values for name, s in scores.items()}

    def priority(values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        ranks = np.full(len(candidates), -np.inf)
        for row, candidate in enumerate(candidates):
            (group,) = np.flatnonzero(candidate != values)
            if candidate[group] > values[group] and group in ranked:
                ranks[row] = float(ranked[group][values[group]])
        return ranks

    return priority


def _family_defaults(task: Task) -> dict[str, Any]:
    vgg = is_vgg(task.model)
    return {"lam": 1e-4 if vgg else 1e-5, "ratio": 0.7 if vgg else 0.4}


def resolve_params(task: Task) -> dict[str, Any]:
    """DEFAULTS, the trial's values, and the family defaults and prune mode filled in."""
    given = dict(task.params)
    check(given)
    params = {**DEFAULTS, **given}
    family = _family_defaults(task)
    if params["lam"] is None:
        params["lam"] = family["lam"]
    if params["sparsity_epochs"] is None:
        params["sparsity_epochs"] = task.train.epochs
    if params["prune"] == "auto":
        use_cost = params["ratio"] is None and task.cost_target is not None
        params["prune"] = "cost" if use_cost else "ratio"
    if params["prune"] == "cost" and task.cost_target is None:
        raise ValueError("method.prune: 'cost' needs a cost target; set cost_target or use prune: ratio")
    if params["ratio"] is None:
        params["ratio"] = family["ratio"]
    return params


def sparsity_train(model: nn.Module, task: Task, lam: float, gamma_init: float, epochs: int) -> int:
    """Set every BN gamma to gamma_init and train with lam x sum |gamma|; returns the images seen."""
    gammas = [m.weight for m in model.modules() if isinstance(m, BN) and m.weight is not None]
    fill_bn_gamma(model, gamma_init)

    def l1_gamma(_: nn.Module) -> Tensor:
        return lam * torch.stack([gamma.abs().sum() for gamma in gammas]).sum()

    history = train(
        model, task.data, rescale_recipe(task.train, epochs), regularizer=l1_gamma if lam else None
    )
    return history.final.images_seen


def search(task: Task) -> SearchResult:
    """Sparsity-train the base model, prune globally by BN gamma, return widths, kept indices and weights."""
    params = resolve_params(task)
    space = task.space
    model = materialize(task.model, seed=task.seed)
    images = sparsity_train(
        model, task, float(params["lam"]), float(params["gamma_init"]), params["sparsity_epochs"]
    )
    model.to("cpu").eval()
    fixed = pad_linked_groups(model, space)
    scores = bn_scores(model, space, exclude=fixed)
    layers = {name: len(bns) for name, bns in bn_members(model, space, exclude=fixed).items()}
    if params["prune"] == "cost":
        chosen = prune_to_cost(space, scores, task.cost_model, float(task.cost_target), task.convention)
    else:
        chosen = prune_to_ratio(space, scores, float(params["ratio"]), layers)
    bn_total = sum(space[name].base * count for name, count in layers.items())
    bn_removed = sum((space[name].base - chosen.widths[name]) * count for name, count in layers.items())
    cost = float(task.cost_model.cost(chosen.widths, task.convention))
    all_gammas = torch.cat([m.weight.detach().abs().flatten() for m in model.modules() if isinstance(m, BN)])
    info = {
        "prune": params["prune"],
        "lam": float(params["lam"]),
        "gamma_init": float(params["gamma_init"]),
        "sparsity_epochs": int(params["sparsity_epochs"]),
        "requested_ratio": float(params["ratio"]) if params["prune"] == "ratio" else None,
        "ratio": chosen.ratio,
        "bn_channel_ratio": bn_removed / bn_total if bn_total else 0.0,
        "pruned_bn_channels": bn_removed,
        "prunable_bn_channels": bn_total,
        "scratch_gamma": bool(params["scratch_gamma"]),
        "pruned_channels": chosen.pruned,
        "prunable_channels": chosen.prunable,
        "threshold": chosen.threshold,
        "cost": cost,
        "convention": task.convention,
        "cost_target": float(task.cost_target) if task.cost_target is not None else None,
        "cost_error": (cost - task.cost_target) / task.cost_target if task.cost_target else None,
        "fixed_groups": sorted(set(space.names) - set(scores)),
        "small_gamma_share": float((all_gammas < SMALL_GAMMA).float().mean()),
        "images_seen": images,
    }
    gamma = float(params["gamma_init"]) if params["scratch_gamma"] else None
    return pruned_result(task, chosen.widths, model, space, chosen.kept, images, info, bn_gamma_init=gamma)


def check(params: Mapping[str, Any]) -> None:
    """Every hyperparameter is a plain value in its allowed range; the message names the field."""
    merged = {**DEFAULTS, **params}
    lam, gamma_init, epochs = merged["lam"], merged["gamma_init"], merged["sparsity_epochs"]
    ratio, prune = merged["ratio"], merged["prune"]
    if lam is not None and not (is_real(lam) and lam >= 0):
        raise ValueError(
            f"method.lam: {lam!r} is not allowed; choose a number >= 0 (or null for the default)"
        )
    if not (is_real(gamma_init) and gamma_init > 0):
        raise ValueError(f"method.gamma_init: {gamma_init!r} is not allowed; choose a number > 0")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(
            f"method.sparsity_epochs: {epochs!r} is not allowed; choose an integer >= 1 (or null)"
        )
    if ratio is not None and not (is_real(ratio) and 0 < ratio < 1):
        raise ValueError(f"method.ratio: {ratio!r} is not allowed; choose a number in (0, 1)")
    if not isinstance(merged["scratch_gamma"], bool):
        raise ValueError(
            f"method.scratch_gamma: {merged['scratch_gamma']!r} is not allowed; choose true or false"
        )
    if prune not in PRUNE_MODES:
        raise ValueError(f"method.prune: {prune!r} is not allowed; choose one of: {', '.join(PRUNE_MODES)}")


METHOD = register(
    Method(
        name="slimming",
        search=search,
        defaults=DEFAULTS,
        summary="Network Slimming: L1 on BN gammas while training, one global threshold to a channel ratio or cost",
        check=check,
        keeps_weights=True,
        prunes=True,
        widest=lambda params: 1.0,
    )
)
