"""Cost matching: one width multiplier that brings a width shape to a cost target, and the integer refinement
that nudges whole divisor steps of channels onto a target (shared by `match_cost`, LW-DNA and slimming)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from widthtune.models.cost import CostModel
from widthtune.models.widths import MAX_WIDTH_RATIO, Widths, largest_width, smallest_width

# how close to a cost target a matched width vector must land: +- 0.5% of the target
COST_TOLERANCE = 0.005
# relative multiplier offsets tried when rounding around the bisected multiplier misses the tolerance
NEIGHBOUR_STEPS = tuple(sign * k / 100 for k in range(1, 31) for sign in (1, -1))

# (current widths, candidate widths one row each) -> a priority per row, higher first
MovePriority = Callable[[np.ndarray, np.ndarray], np.ndarray]


class CostTargetError(ValueError):
    """No multiplier of the shape reaches the cost target within tolerance; the message gives the reachable range."""


@dataclass(frozen=True)
class CostMatch:
    """The matched widths, the multiplier that produced them and how close their cost is to the target."""

    widths: Widths
    multiplier: float
    cost: float
    target: float

    @property
    def relative_error(self) -> float:
        """(cost - target) / target."""
        return (self.cost - self.target) / self.target


@dataclass(frozen=True)
class Refinement:
    """Integer widths after refinement, their cost, and how many moves brought them there."""

    values: np.ndarray
    cost: float
    moves: int


def divisor_moves(steps: np.ndarray, max_steps: int = 1, pairs: bool = True) -> np.ndarray:
    """Every move `refine_widths` tries, one row each, by the first group they move: 1..max_steps divisor steps
    of one group up or down and, with `pairs`, one step of a group against 1..max_steps steps of another."""
    steps = np.asarray(steps, dtype=np.int64)
    if steps.ndim != 1 or not (steps > 0).all():
        raise ValueError(f"steps: {steps.tolist()} is not allowed; give one positive integer step per group")
    if max_steps < 1:
        raise ValueError(f"max_steps: {max_steps!r} is not allowed; choose an integer >= 1")
    count = len(steps)
    unit = np.diag(steps)
    multiples = np.arange(1, max_steps + 1)
    moves = [(multiples[:, None, None] * unit[None]).reshape(-1, count)]
    if pairs:
        # [j, a, b] = one step of group a against j steps of group b (a == b gives single moves again)
        against = unit[None, :, None, :] - multiples[:, None, None, None] * unit[None, None, :, :]
        moves.append(against.reshape(-1, count))
    stacked = np.concatenate(moves)
    moves_array = np.unique(np.concatenate([stacked, -stacked]), axis=0)
    moves_array = moves_array[np.abs(moves_array).sum(axis=1) > 0]
    moved = moves_array != 0
    first, last = np.argmax(moved, axis=1), len(steps) - 1 - np.argmax(moved[:, ::-1], axis=1)
    return moves_array[np.lexsort((last, first))]  # ties go to the earliest groups


def refine_widths(
    values: np.ndarray,
    target: float,
    cost_model: CostModel,
    convention: str = "macs",
    *,
    tolerance: float = COST_TOLERANCE,
    lower: np.ndarray,
    upper: np.ndarray,
    steps: np.ndarray | None = None,
    max_steps: int = 1,
    pairs: bool = True,
    under_target: bool = False,
    priority: MovePriority | None = None,
) -> Refinement:
    """Integer widths move in whole steps, so a bisected cost misses its target by up to one step; take moves
    (`divisor_moves`, priced in one batch) that bring the cost closer, until within `tolerance` or none does.

    Each group stays within [lower, upper]. The error never grows: a move is taken only if it brings the cost
    strictly closer, the closest one wins (ties: the first in `divisor_moves` order), or the highest
    `priority` among them where one is given; `under_target` only takes moves that keep the cost at or
    below the target.
    """
    current = np.asarray(values, dtype=np.int64)
    low = np.broadcast_to(np.asarray(lower, dtype=np.int64), current.shape)
    high = np.broadcast_to(np.asarray(upper, dtype=np.int64), current.shape)
    if current.shape != (len(cost_model.space),):
        raise ValueError(
            f"values: {current.shape[0]} widths given, the cost model prices {len(cost_model.space)}"
        )
    if not (low <= current).all() or not (current <= high).all():
        raise ValueError(
            f"values: {current.tolist()} is not within lower {low.tolist()} and upper {high.tolist()}"
        )
    if not target > 0:
        raise ValueError(f"target: {target!r} is not allowed; choose a cost > 0")
    if not tolerance >= 0:
        raise ValueError(f"tolerance: {tolerance!r} is not allowed; choose a fraction >= 0")
    if steps is None:
        steps = np.asarray([group.divisor for group in cost_model.space], dtype=np.int64)
    moves = divisor_moves(steps, max_steps, pairs)
    cost = float(cost_model.cost(current.astype(np.float64), convention))
    taken = 0
    while abs(cost - target) > tolerance * target:  # the error falls strictly each move, so this ends
        candidates = current[None, :] + moves
        candidates = candidates[((candidates >= low) & (candidates <= high)).all(axis=1)]
        costs = np.asarray(cost_model.cost(candidates.astype(np.float64), convention)).reshape(-1)
        errors = np.abs(costs - target)
        useful = errors < abs(cost - target)
        if under_target:
            useful &= costs <= target
        if not useful.any():
            break
        if priority is None:
            best = int(np.argmin(np.where(useful, errors, np.inf)))
        else:
            best = int(np.argmax(np.where(useful, priority(current, candidates), -np.inf)))
        current, cost, taken = candidates[best], float(costs[best]), taken + 1
    return Refinement(current, cost, taken)


def match_cost(
    shape: Widths | Mapping[str, float],
    target: float,
    cost_model: CostModel,
    *,
    convention: str = "macs",
    tolerance: float = COST_TOLERANCE,
    max_multiplier: float = float(MAX_WIDTH_RATIO),
) -> CostMatch:
    """Scale `shape` by one multiplier (rounded to each group's divisor) until its cost is `target` +- tolerance.

    Where rounding each group up or down cannot bridge a cost step, groups may move one divisor step further,
    two at a time, so every width stays within two steps of shape x multiplier.
    """
    space = cost_model.space
    shape_values = np.asarray([float(shape[name]) for name in space.names])
    if not (np.isfinite(shape_values).all() and (shape_values > 0).all()):
        raise CostTargetError("every entry of a width shape must be a positive number")
    if not target > 0:
        raise CostTargetError(f"cost target must be positive, got {target}")
    divisors = np.asarray([g.divisor for g in space], dtype=np.float64)
    floors = np.asarray([smallest_width(g) for g in space], dtype=np.float64)
    ceilings = np.asarray([largest_width(g) for g in space], dtype=np.float64)  # what Widths accepts

    def widths_at(multiplier: float) -> np.ndarray:
        rounded = np.floor(shape_values * multiplier / divisors + 0.5) * divisors
        return np.clip(rounded, floors, ceilings)

    def cost_at(multiplier: float) -> float:
        return float(cost_model.cost(widths_at(multiplier), convention))

    def refined_at(multiplier: float, slack: int = 0) -> Refinement:
        # one multiplier moves every group across its rounding boundary at once, so on small networks the
        # cost jumps in steps larger than the tolerance; floor or ceil per group fills in those steps, and
        # with `slack` one more divisor step either way, two groups at a time
        exact = shape_values * multiplier
        return refine_widths(
            widths_at(multiplier),
            target,
            cost_model,
            convention,
            tolerance=tolerance / 4,
            lower=np.clip((np.floor(exact / divisors) - slack) * divisors, floors, ceilings),
            upper=np.clip((np.ceil(exact / divisors) + slack) * divisors, floors, ceilings),
            pairs=slack > 0,
        )

    low_cost = float(cost_model.cost(floors, convention))
    high_cost = cost_at(max_multiplier)
    if target < low_cost * (1 - tolerance) or target > high_cost * (1 + tolerance):
        raise CostTargetError(
            f"{convention} target {target:,.0f} is out of reach: this shape spans {low_cost:,.0f} (every group at its "
            f"minimum) to {high_cost:,.0f} (x{max_multiplier:g}, each group at most {MAX_WIDTH_RATIO}x its base)"
        )
    low, high = 0.0, max_multiplier
    for _ in range(100):  # smallest multiplier whose cost reaches the target
        mid = (low + high) / 2
        if cost_at(mid) >= target:
            high = mid
        else:
            low = mid
        if high - low < 1e-9 * max(1.0, high):
            break
    candidates = [m for m in (low, high) if m > 0] or [high]
    best = min(candidates, key=lambda m: abs(cost_at(m) - target))
    refined = refined_at(best)
    # on small networks the floor/ceil choice around one multiplier may not bridge a step: try neighbours,
    # then (a shape with many one-channel groups, as MorphNet's alive counts can be) one more step of slack
    for slack in (0, 1):
        for step in (0.0, *NEIGHBOUR_STEPS) if slack else NEIGHBOUR_STEPS:
            if abs(refined.cost - target) <= tolerance * target:
                break
            multiplier = best * (1 + step)
            candidate = refined_at(multiplier, slack)
            if abs(candidate.cost - target) < abs(refined.cost - target):
                refined, best = candidate, multiplier
    if abs(refined.cost - target) > tolerance * target:
        raise CostTargetError(
            f"{convention} target {target:,.0f} cannot be met within {tolerance:.1%}: the closest width vector costs "
            f"{refined.cost:,.0f} ({(refined.cost - target) / target:+.2%}); divisor rounding is too coarse here -- "
            f"set cost_target.tolerance (e.g. {max(2 * tolerance, abs(refined.cost - target) / target * 1.1):.3f}) "
            "or a smaller divisor option in the model spec (e.g. ...,divisor=1)"
        )
    return CostMatch(Widths(space, tuple(int(v) for v in refined.values)), best, refined.cost, target)
