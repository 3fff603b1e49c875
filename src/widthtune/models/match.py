"""Cost matching: one width multiplier that brings a width shape to a cost target."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from widthtune.models.cost import CostModel
from widthtune.models.widths import MAX_WIDTH_RATIO, Widths, largest_width, smallest_width

# relative multiplier offsets tried when rounding around the bisected multiplier misses the tolerance
NEIGHBOUR_STEPS = tuple(sign * k / 100 for k in range(1, 31) for sign in (1, -1))


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


def match_cost(
    shape: Widths | Mapping[str, float],
    target: float,
    cost_model: CostModel,
    *,
    convention: str = "macs",
    tolerance: float = 0.005,
    max_multiplier: float = float(MAX_WIDTH_RATIO),
) -> CostMatch:
    """Scale `shape` by one multiplier (rounded to each group's divisor) until its cost is `target` +- tolerance."""
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
    values = _refine_rounding(
        widths_at(best),
        shape_values * best,
        divisors,
        floors,
        ceilings,
        target,
        cost_model,
        convention,
        tolerance,
    )
    cost = float(cost_model.cost(values, convention))
    # on small networks the floor/ceil choice around one multiplier may not bridge a step: try neighbours
    for step in NEIGHBOUR_STEPS:
        if abs(cost - target) <= tolerance * target:
            break
        multiplier = best * (1 + step)
        candidate = _refine_rounding(
            widths_at(multiplier),
            shape_values * multiplier,
            divisors,
            floors,
            ceilings,
            target,
            cost_model,
            convention,
            tolerance,
        )
        candidate_cost = float(cost_model.cost(candidate, convention))
        if abs(candidate_cost - target) < abs(cost - target):
            values, cost, best = candidate, candidate_cost, multiplier
    if abs(cost - target) > tolerance * target:
        raise CostTargetError(
            f"{convention} target {target:,.0f} cannot be met within {tolerance:.1%}: the closest width vector costs "
            f"{cost:,.0f} ({(cost - target) / target:+.2%}); divisor rounding is too coarse here -- lower the divisor "
            f"or loosen the tolerance"
        )
    return CostMatch(Widths(space, tuple(int(v) for v in values)), best, cost, target)


def _refine_rounding(
    values: np.ndarray,
    exact: np.ndarray,
    divisors: np.ndarray,
    floors: np.ndarray,
    ceilings: np.ndarray,
    target: float,
    cost_model: CostModel,
    convention: str,
    tolerance: float,
) -> np.ndarray:
    """Flip single groups between rounding down and up (never further) while that brings the cost closer.

    One multiplier moves every group across its rounding boundary at once, so on small networks the cost
    jumps in steps larger than the tolerance; choosing floor or ceil per group keeps every width within one
    divisor of multiplier x shape and fills in those steps.
    """
    down = np.clip(np.floor(exact / divisors) * divisors, floors, ceilings)
    up = np.clip(np.ceil(exact / divisors) * divisors, floors, ceilings)
    values = values.copy()
    error = abs(float(cost_model.cost(values, convention)) - target)
    for _ in range(len(values) * 2):
        if error <= tolerance * target / 4:
            break
        flipped = np.repeat(values[None, :], len(values), axis=0)
        alternative = np.where(values == up, down, up)
        flipped[np.arange(len(values)), np.arange(len(values))] = alternative
        errors = np.abs(cost_model.cost(flipped, convention) - target)
        best = int(np.argmin(errors))
        if errors[best] >= error:
            break
        values, error = flipped[best], float(errors[best])
    return values
