"""Width vectors as search spaces: per-group or per-stage multipliers, optionally cost-matched directions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from widthtune.models.cost import CostModel
from widthtune.models.match import match_cost
from widthtune.models.space import ChannelSpace
from widthtune.models.widths import Widths

GRANULARITIES = ("group", "stage")
PREFIX = "widths"
COST_CONSTRAINT = "cost"


@dataclass(frozen=True)
class WidthSpace:
    """Multipliers of the base widths, one per group or one per stage.

    With `matched`, a sample is a direction: its shape is scaled by one multiplier (`match_cost`) to the cost
    target, so every trial meets the budget. Without it the rounded widths are trained as sampled and, under
    Optuna, the cost target becomes a constraint on the trial (`constrain`).
    """

    space: ChannelSpace
    granularity: str = "group"
    low: float = 0.25
    high: float = 2.0
    matched: bool = True

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"space: {self.granularity!r} is not allowed; choose one of: {', '.join(GRANULARITIES)}"
            )
        if not 0 < self.low < self.high:
            raise ValueError(f"low/high: [{self.low}, {self.high}] is not allowed; choose 0 < low < high")

    def dimensions(self) -> dict[str, tuple[str, ...]]:
        """Dimension name -> the groups it scales (per stage: groups without a stage keep their own)."""
        if self.granularity == "group":
            return {name: (name,) for name in self.space.names}
        dims: dict[str, list[str]] = {}
        for group in self.space:
            key = f"stage{group.stage}" if group.stage is not None else group.name
            dims.setdefault(key, []).append(group.name)
        return {key: tuple(names) for key, names in dims.items()}

    def param_names(self) -> dict[str, str]:
        """Trial-config key -> dimension."""
        return {f"{PREFIX}.{dim}": dim for dim in self.dimensions()}

    def to_tune(self) -> dict[str, Any]:
        """One `tune.uniform` per dimension, keyed like the trial config."""
        from ray import tune

        return {key: tune.uniform(self.low, self.high) for key in self.param_names()}

    def suggest(self, trial: Any) -> dict[str, float]:
        """Define-by-run: one `suggest_float` per dimension on an Optuna trial."""
        return {key: trial.suggest_float(key, self.low, self.high) for key in self.param_names()}

    def shape(self, params: Mapping[str, Any]) -> dict[str, float]:
        """Group -> base width x its dimension's multiplier (not rounded)."""
        missing = [key for key in self.param_names() if key not in params]
        if missing:
            raise ValueError(f"the trial config lacks width dimensions {', '.join(missing[:4])}")
        shape: dict[str, float] = {}
        for key, dim in self.param_names().items():
            for name in self.dimensions()[dim]:
                shape[name] = self.space[name].base * float(params[key])
        return shape

    def widths(
        self,
        params: Mapping[str, Any],
        cost_model: CostModel | None = None,
        target: float | None = None,
        convention: str = "macs",
    ) -> Widths:
        """The width vector a sample stands for: matched to `target` when matched, else rounded as sampled."""
        shape = self.shape(params)
        if self.matched and target is not None:
            if cost_model is None:
                raise ValueError("a cost-matched width space needs the cost model")
            return match_cost(shape, target, cost_model, convention=convention).widths
        return Widths.from_mapping(self.space, shape, round=True)


def check_width_params(granularity: Any, low: Any, high: Any) -> None:
    """Validate a method's width-space settings, naming the field (`method.space`, `method.low/high`)."""
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"method.space: {granularity!r} is not allowed; choose one of: {', '.join(GRANULARITIES)}"
        )
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    if not numeric or not 0 < low < high:
        raise ValueError(
            f"method.low/high: [{low!r}, {high!r}] is not allowed; choose numbers with 0 < low < high"
        )


def constrain(trial: Any, cost: float, target: float) -> None:
    """Set the cost constraint on an Optuna trial: feasible when cost / target - 1 <= 0."""
    trial.set_constraint(COST_CONSTRAINT, cost / target - 1.0)
