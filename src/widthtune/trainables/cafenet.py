"""`cafenet`: a locally free weight-sharing supernet (min-min), searched on FLOPs-sensitive bins (max-max).

CafeNet (Su et al., ICLR 2021), section by section:

- Locally free sharing (eq. 5): width c of a group is its base channels [0, c - r - 1) plus c - c_b free
  channels chosen within [c - r - 1, c + r) (0-based), offset r = `offset` (1).
- Min-min training: each step samples one width vector, runs `assignments` of its locally free assignments
  without gradients and updates only the one with the smallest training loss. The paper's appendix (not in
  our copy) has its count; the default 3 is the number of ways one group can place its r + 1 = 2 free
  channels in its 2r + 1 = 3 positions at r = 1, so a step sees as many assignments as one group has.
- Max-max selection: a width vector's score is the best held-out accuracy (after BN recalibration) among
  `eval_assignments` of its assignments.
- FLOPs-sensitive bins (eq. 7, 9): from the cost model, b_i = beta x max_j eps_j / eps_i, beta = 1.
- Search under cost <= target: evolutionary (`strategy: evolutionary`, CafeNet-E: `population`, `generations`,
  `mutation`, `crossover`) or random (`strategy: random`, CafeNet-R: `samples` candidates, by default as many
  as the evolution scores); every candidate is made maximal under the budget (search_spaces/bin_search.py).
- Multi-stage search (eq. 10) with `stages` T > 1: stage t searches under FLOPs(0) - (FLOPs(0) - target) t/T,
  below the previous stage's widths, with minimum bin size beta x alpha^(T - t) (it shrinks by alpha = 2 per
  stage down to beta); the evolution of a stage starts from the previous stage's best.

The supernet (`width` times the base: 1.0, the model itself, as the paper searches within it) is a shared
`trained-supernet` artifact. The widths found are trained from scratch (not cost-matched unless `match`, so
the paper's cost <= target holds). Search FLOPs: the supernet's training (every forward of every assignment
tried and every backward) plus every recalibration and evaluation forward of the search.

The paper's Random baseline (20 random networks under the constraint trained briefly, the best continued)
is a config, not an option: method `random` with `shape_seed` a space, `num_samples: 20`, searched per seed
(`search: {name: optuna}`) under `scheduler: {name: asha, grace_period: <brief epochs>, reduction_factor: 20}`
(see configs/cafenet-mobilenetv2-cifar10.yaml).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from widthtune.models.widths import Widths, smallest_width
from widthtune.search_spaces.bin_search import (
    BinGrid,
    BudgetUnreachable,
    SearchOutcome,
    evolutionary_search,
    random_search,
)
from widthtune.search_spaces.bins import bin_sizes
from widthtune.trainables.artifacts import ArtifactContext, ArtifactRecipe
from widthtune.trainables.hyperparameters import real
from widthtune.trainables.method import Method
from widthtune.trainables.registry import register
from widthtune.trainables.supernet_training import (
    Scorer,
    calibration_batches,
    held_out,
    locally_free,
    supernet_for,
    supernet_recipe,
    trial_context,
)
from widthtune.trainables.task import SearchResult, Task

DEFAULTS: dict[str, Any] = {
    "width": 1.0,
    "offset": 1,
    "assignments": 3,
    "eval_assignments": 3,
    "beta": 1,
    "alpha": 2.0,
    "stages": 1,
    "strategy": "evolutionary",
    "population": 40,
    "generations": 80,
    "mutation": 0.1,
    "crossover": 0.5,
    "samples": None,
    "epochs": None,
    "calibration_batches": 5,
    "eval_batches": None,
    "match": False,
}
STRATEGIES = ("evolutionary", "random")
SUPERNET = "supernet"


def recipe(params: Mapping[str, Any], context: ArtifactContext) -> ArtifactRecipe:
    """The supernet this method trains for these hyperparameters (min-min over locally free assignments)."""
    merged = {**DEFAULTS, **params}
    epochs = merged["epochs"] if merged["epochs"] is not None else context.train.get("epochs", 30)
    return supernet_recipe(
        context,
        multiplier=float(merged["width"]),
        rule="min-min",
        settings={"offset": int(merged["offset"]), "assignments": int(merged["assignments"])},
        epochs=int(epochs),
    )


def artifacts(params: Mapping[str, Any], context: ArtifactContext) -> Mapping[str, ArtifactRecipe]:
    """One shared supernet per recipe and seed."""
    return {SUPERNET: recipe(params, context)}


def stage_plan(
    full: float, target: float, beta: float, alpha: float, stages: int
) -> list[tuple[float, float]]:
    """Eq. 10: (budget, minimum bin size) per stage; the budget falls linearly to the target, bins shrink by alpha."""
    return [(full - (full - target) * t / stages, beta * alpha ** (stages - t)) for t in range(1, stages + 1)]


def search(task: Task) -> SearchResult:
    """Shared supernet; per stage, bins from the cost model and evolutionary or random search by max-max score."""
    params = {**DEFAULTS, **task.params}
    check(params)
    cost_model, convention = task.cost_model, task.convention
    if task.cost_target is not None:
        narrowest = Widths(task.space, tuple(smallest_width(g) for g in task.space))
        lowest = float(cost_model.cost(narrowest, convention))
        if task.cost_target < lowest:
            raise ValueError(
                f"cost_target: {task.cost_target:,.0f} ({convention}) is out of reach for cafenet: its "
                f"smallest sub-network costs {lowest:,.0f}"
            )
    need = recipe(params, trial_context(task))
    supernet, summary, note = supernet_for(task, SUPERNET, need)
    full = float(cost_model.cost(supernet.max_widths, convention))
    target = float(task.cost_target) if task.cost_target is not None else 0.5 * full
    batch = min(task.train.batch_size, int(task.data.train_x.shape[0]))
    scorer = Scorer(
        supernet,
        calibration_batches(task.data, batch, int(params["calibration_batches"]), task.seed),
        held_out(task.data, task.train.eval_batch_size, params["eval_batches"]),
        cost_model,
    )
    rng = np.random.default_rng(task.seed)
    offset, tries = int(params["offset"]), int(params["eval_assignments"])

    def score(values: np.ndarray) -> float:
        widths = Widths(task.space, tuple(int(v) for v in values))
        return max(scorer(locally_free(widths, supernet.max_widths, offset, rng)) for _ in range(tries))

    def cost(values: np.ndarray) -> np.ndarray:
        return np.asarray(cost_model.cost(np.asarray(values, dtype=np.float64), convention))

    population, generations = int(params["population"]), int(params["generations"])
    samples = params["samples"] if params["samples"] is not None else population * (generations + 1)
    lower = np.asarray(supernet.min_widths.values, dtype=np.int64)
    upper = np.asarray(supernet.max_widths.values, dtype=np.int64)
    stages = []
    outcome: SearchOutcome | None = None
    for budget, beta in stage_plan(
        full, target, float(params["beta"]), float(params["alpha"]), int(params["stages"])
    ):
        bins = bin_sizes(cost_model, Widths(task.space, tuple(int(v) for v in upper)), max(1.0, beta), "macs")
        grid = BinGrid(upper, lower, bins)
        try:
            if params["strategy"] == "random":
                outcome = random_search(grid, score, cost, budget, int(samples), rng)
            else:
                outcome = evolutionary_search(
                    grid,
                    score,
                    cost,
                    budget,
                    population=population,
                    generations=generations,
                    mutation=float(params["mutation"]),
                    crossover=float(params["crossover"]),
                    rng=rng,
                )
        except BudgetUnreachable as error:
            raise ValueError(f"{error} ({convention}) for cafenet with width={params['width']}") from None
        stages.append(
            {
                "budget": budget,
                "min_bin": max(1.0, beta),
                "bins": dict(zip(task.space.names, (int(b) for b in bins), strict=True)),
                "best": float(outcome.score),
                "cost": float(cost(outcome.widths)),
                "scored": len(outcome.scored),
            }
        )
        upper = outcome.widths
    widths = Widths(task.space, tuple(int(v) for v in outcome.widths))
    info = {
        "supernet": note,
        "supernet_flops": summary.flops,
        "supernet_epochs": summary.epochs,
        "strategy": params["strategy"],
        "held_out_accuracy": outcome.score,
        "cost": float(cost(outcome.widths)),
        "cost_target": target,
        "stages": stages,
        "scored": scorer.scored,
        "max_widths": supernet.max_widths.as_dict(),
    }
    return SearchResult(
        widths, search_flops=summary.flops + scorer.flops, match_target=bool(params["match"]), info=info
    )


def _integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"method.{name}: {value!r} is not allowed; choose an integer >= {minimum}")


def check(params: Mapping[str, Any]) -> None:
    """Every hyperparameter is in range; errors name the field and what is allowed."""
    merged = {**DEFAULTS, **params}
    if not real("width", merged["width"]) > 0:
        raise ValueError(f"method.width: {merged['width']!r} is not allowed; choose a number > 0")
    _integer("offset", merged["offset"], 0)
    for name in ("assignments", "eval_assignments", "stages", "population", "calibration_batches"):
        _integer(name, merged[name], 1)
    _integer("generations", merged["generations"], 0)
    for name in ("samples", "epochs", "eval_batches"):
        if merged[name] is not None:
            _integer(name, merged[name], 1)
    if not real("beta", merged["beta"]) >= 1:
        raise ValueError(
            f"method.beta: {merged['beta']!r} is not allowed; choose a number >= 1 (the minimum bin size)"
        )
    if not real("alpha", merged["alpha"]) > 0:
        raise ValueError(f"method.alpha: {merged['alpha']!r} is not allowed; choose a number > 0")
    for name in ("mutation", "crossover"):
        if not 0 <= real(name, merged[name]) <= 1:
            raise ValueError(f"method.{name}: {merged[name]!r} is not allowed; choose a number in [0, 1]")
    if merged["strategy"] not in STRATEGIES:
        raise ValueError(
            f"method.strategy: {merged['strategy']!r} is not allowed; choose one of: {', '.join(STRATEGIES)}"
        )
    if not isinstance(merged["match"], bool):
        raise ValueError(f"method.match: {merged['match']!r} is not allowed; choose true or false")


METHOD = register(
    Method(
        name="cafenet",
        search=search,
        defaults=DEFAULTS,
        summary="CafeNet: locally free supernet (min-min), evolutionary or random search on FLOPs-sensitive bins",
        check=check,
        artifacts=artifacts,
        widest=lambda params: float(params.get("width", DEFAULTS["width"])),
    )
)
