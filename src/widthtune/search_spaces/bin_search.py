"""Evolutionary and random search of width vectors on a bin grid under a cost budget (CafeNet-E, CafeNet-R).

A candidate removes k_i bins from each group's upper width (w_i = upper_i - k_i b_i, never under the lower
width). Every candidate either search looks at is made maximal under the budget: bins are removed from random
groups until its cost is at most the budget, then added back to random groups while one still fits. So no
candidate is over the budget, and none leaves a whole bin unused -- on a fine grid each lands just under it.
Evolution keeps the best half as parents; a child is the uniform crossover of two (probability `crossover`)
or a mutation of one (each gene redrawn with probability `mutation`); the next population is the best of
parents and children. Random search scores `samples` independent candidates. Scores are cached by candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class BinGrid:
    """Per group: the widest width, the narrowest allowed, and the bin size; widths step down by bins."""

    upper: np.ndarray
    lower: np.ndarray
    bins: np.ndarray

    @property
    def most(self) -> np.ndarray:
        """How many bins each group can lose."""
        return np.maximum(0, (self.upper - self.lower) // self.bins)

    def widths(self, removed: np.ndarray) -> np.ndarray:
        """Width vectors (one, or a batch) from bins removed per group."""
        return self.upper - removed * self.bins


CostFn = Callable[[np.ndarray], np.ndarray]
ScoreFn = Callable[[np.ndarray], float]


class BudgetUnreachable(ValueError):
    """Even the narrowest widths of the grid cost more than the budget."""


def fill(
    grid: BinGrid, removed: np.ndarray, cost: CostFn, budget: float, rng: np.random.Generator
) -> np.ndarray:
    """The candidate made maximal under the budget: random bins off until it fits, then random bins back on."""
    removed = np.clip(np.asarray(removed, dtype=np.int64), 0, grid.most)
    while float(cost(grid.widths(removed))) > budget:
        open_ = np.flatnonzero(removed < grid.most)
        if len(open_) == 0:
            raise BudgetUnreachable(
                f"cost_target: {budget:,.0f} is out of reach: the narrowest widths of the bin grid cost "
                f"{float(cost(grid.widths(removed))):,.0f}"
            )
        removed[rng.choice(open_)] += 1
    while True:
        back = np.flatnonzero(removed > 0)
        if len(back) == 0:
            return removed
        trials = np.repeat(removed[None, :], len(back), axis=0)
        trials[np.arange(len(back)), back] -= 1
        fits = back[np.asarray(cost(grid.widths(trials))) <= budget]
        if len(fits) == 0:
            return removed
        removed[rng.choice(fits)] -= 1


@dataclass
class SearchOutcome:
    """The best candidate's widths and score, and every candidate scored (widths, score), in order."""

    widths: np.ndarray
    score: float
    scored: list[tuple[tuple[int, ...], float]] = field(default_factory=list)


class _Cache:
    def __init__(self, grid: BinGrid, score: ScoreFn) -> None:
        self.grid, self.score, self.seen = grid, score, {}

    def __call__(self, removed: np.ndarray) -> float:
        key = tuple(int(v) for v in self.grid.widths(removed))
        if key not in self.seen:
            self.seen[key] = float(self.score(np.asarray(key, dtype=np.int64)))
        return self.seen[key]

    def outcome(self) -> SearchOutcome:
        best = max(self.seen.items(), key=lambda item: item[1])
        return SearchOutcome(np.asarray(best[0], dtype=np.int64), best[1], list(self.seen.items()))


def _random_candidate(grid: BinGrid, cost: CostFn, budget: float, rng: np.random.Generator) -> np.ndarray:
    return fill(grid, rng.integers(0, grid.most + 1), cost, budget, rng)


def random_search(
    grid: BinGrid, score: ScoreFn, cost: CostFn, budget: float, samples: int, rng: np.random.Generator
) -> SearchOutcome:
    """CafeNet-R: the best of `samples` random maximal candidates under the budget."""
    cache = _Cache(grid, score)
    for _ in range(samples):
        cache(_random_candidate(grid, cost, budget, rng))
    return cache.outcome()


def evolutionary_search(
    grid: BinGrid,
    score: ScoreFn,
    cost: CostFn,
    budget: float,
    *,
    population: int,
    generations: int,
    mutation: float,
    crossover: float,
    rng: np.random.Generator,
    start: np.ndarray | None = None,
) -> SearchOutcome:
    """CafeNet-E: a population of maximal candidates evolved by crossover and mutation for `generations`."""
    cache = _Cache(grid, score)
    members = [] if start is None else [fill(grid, start, cost, budget, rng)]
    while len(members) < population:
        members.append(_random_candidate(grid, cost, budget, rng))
    for _ in range(generations):
        members.sort(key=cache, reverse=True)
        parents = members[: max(2, population // 2)]
        children: list[np.ndarray] = []
        for _ in range(4 * population):  # attempts: duplicates are dropped
            if len(children) == population:
                break
            if rng.random() < crossover:
                a, b = rng.choice(len(parents), size=2, replace=False)
                child = np.where(rng.random(len(grid.upper)) < 0.5, parents[a], parents[b])
            else:
                child = parents[rng.integers(len(parents))].copy()
                redraw = rng.random(len(grid.upper)) < mutation
                child[redraw] = rng.integers(0, grid.most + 1)[redraw]
            child = fill(grid, child, cost, budget, rng)
            if all(not np.array_equal(child, other) for other in (*members, *children)):
                children.append(child)
        members = sorted([*parents, *children], key=cache, reverse=True)[:population]
    for member in members:
        cache(member)
    return cache.outcome()
