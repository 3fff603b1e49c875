"""The checks every method's hyperparameters share, so each error reads alike: `method.<name>: <value> is not allowed`.

A YAML value can be a bool where a number was meant (`yes`), a string (`3.0e6` without a dot before the e), or a
float where a count was meant; none of those passes.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_real(value: Any) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: Any, least: int) -> bool:
    """An int (not a bool) of at least `least`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def real(name: str, value: Any) -> float:
    """The value as a float, or the error naming `method.<name>`."""
    if not is_real(value):
        raise ValueError(f"method.{name}: {value!r} is not allowed; choose a number")
    return float(value)


def integer(name: str, value: Any, least: int = 1) -> int:
    """The value as an int of at least `least`, or the error naming `method.<name>`."""
    if not is_integer(value, least):
        raise ValueError(f"method.{name}: {value!r} is not allowed; choose an integer >= {least}")
    return int(value)
