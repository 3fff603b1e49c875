"""Cost targets: `{macs: 20M}` (absolute, any convention or params) or `{ratio: 0.5}` of the base model."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from widthtune.models.cost import CONVENTIONS, CostModel
from widthtune.models.match import COST_TOLERANCE

ABSOLUTE_KEYS = CONVENTIONS
# what a cost target may say besides its value
SETTINGS = ("convention", "tolerance")
SUFFIXES = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKMGT]?)\s*$")


@dataclass(frozen=True)
class CostTarget:
    """An absolute target in one convention, and how the user wrote it (for tables and tags)."""

    value: float
    convention: str
    label: str
    tolerance: float = COST_TOLERANCE


def parse_quantity(field: str, value: Any) -> float:
    """A positive number, written plainly or with a k/M/G/T suffix ("20M")."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: {value!r} is not a quantity; write a number such as 20000000 or 20M")
    if isinstance(value, int | float):
        number = float(value)
    else:
        match = _NUMBER.match(str(value))
        if not match:
            raise ValueError(f"{field}: {value!r} is not a quantity; write a number such as 20000000 or 20M")
        number = float(match.group(1)) * SUFFIXES[match.group(2)]
    if not number > 0:
        raise ValueError(f"{field}: {value!r} is not allowed; a cost target must be positive")
    return number


def check_cost_target(target: Mapping[str, Any]) -> None:
    """Exactly one of ratio/macs/flops/lwdna/params, an optional convention for ratios, an optional tolerance."""
    keys = [k for k in target if k not in SETTINGS]
    allowed = ", ".join(("ratio", *ABSOLUTE_KEYS))
    if len(keys) != 1 or keys[0] not in ("ratio", *ABSOLUTE_KEYS):
        raise ValueError(f"cost_target: {dict(target)!r} needs exactly one of: {allowed}")
    convention = target.get("convention", "macs")
    if convention not in ABSOLUTE_KEYS:
        raise ValueError(
            f"cost_target.convention: {convention!r} is not allowed; choose one of: {', '.join(ABSOLUTE_KEYS)}"
        )
    if keys[0] != "ratio" and "convention" in target:
        raise ValueError(
            "cost_target.convention: only a ratio takes a convention; an absolute key names its own"
        )
    tolerance = target.get("tolerance", COST_TOLERANCE)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 < tolerance < 0.5:
        raise ValueError(
            f"cost_target.tolerance: {tolerance!r} is not allowed; choose a fraction in (0, 0.5), e.g. 0.01 for 1%"
        )


def resolve_cost_target(target: Mapping[str, Any] | None, cost_model: CostModel) -> CostTarget | None:
    """The absolute target for this model (a ratio is taken of the base model's cost)."""
    if not target:
        return None
    check_cost_target(target)
    (key,) = [k for k in target if k not in SETTINGS]
    tolerance = float(target.get("tolerance", COST_TOLERANCE))
    if key == "ratio":
        convention = target.get("convention", "macs")
        ratio = parse_quantity("cost_target.ratio", target["ratio"])
        value = ratio * cost_model.base()[convention]
        return CostTarget(value, convention, f"{convention} x{ratio:g}", tolerance)
    value = parse_quantity(f"cost_target.{key}", target[key])
    return CostTarget(value, key, f"{key} {target[key]}", tolerance)
