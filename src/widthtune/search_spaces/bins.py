"""CafeNet's FLOPs-sensitive bins: fewer channels per searching unit where a channel costs more (eq. 7-9).

The sensitivity of group i is what one of its channels costs in the layers around it (eq. 7): with the cost
model bilinear in the group widths, the drop in cost when group i loses one channel at the reference widths.
The bin size is b_i = beta x max_j eps_j / eps_i (eq. 9), rounded to the nearest integer, at least 1, then up
to a multiple of the group's divisor; a group that costs nothing is one bin.
"""

from __future__ import annotations

import math

import numpy as np

from widthtune.models.cost import CostModel
from widthtune.models.widths import Widths


def sensitivities(cost_model: CostModel, widths: Widths, convention: str = "macs") -> np.ndarray:
    """eps_i: the cost of one channel of each group at `widths` (eq. 7)."""
    reference = np.asarray(widths.values, dtype=np.float64)
    fewer = np.repeat(reference[None, :], len(reference), axis=0) - np.eye(len(reference))
    full = float(cost_model.cost(reference, convention))
    return full - np.asarray(cost_model.cost(fewer, convention), dtype=np.float64)


def bin_sizes(cost_model: CostModel, widths: Widths, beta: float, convention: str = "macs") -> np.ndarray:
    """b_i = beta x max_j eps_j / eps_i (eq. 9), whole channels and divisor multiples, at most the width."""
    if not beta >= 1:
        raise ValueError(f"method.beta: {beta!r} is not allowed; choose a number >= 1 (the minimum bin size)")
    eps = sensitivities(cost_model, widths, convention)
    top = float(eps.max())
    sizes = []
    for group, width, value in zip(widths.space, widths.values, eps, strict=True):
        size = width if value <= 0 else max(1, math.floor(beta * top / value + 0.5))
        size = math.ceil(size / group.divisor) * group.divisor
        sizes.append(min(size, width))
    return np.asarray(sizes, dtype=np.int64)
