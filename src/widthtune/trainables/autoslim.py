"""`autoslim`: a slimmable supernet trained by the sandwich rule, then slimmed greedily to the cost target.

AutoSlim (Yu & Huang 2019, as the width-transfer paper runs it): the model widened by `width` (1.5x) is one
weight-sharing supernet, trained once per experiment, recipe and seed (the `trained-supernet` artifact) with
the sandwich rule -- the largest, the smallest and `n` random per-group widths each step -- and inplace
distillation (the largest learns from the labels, the others from its soft targets). Greedy slimming then
starts at the largest widths and, one step at a time, tries removing one `step` of channels from each group
(its divisor, or a twelfth of the group as AutoSlim's release counts), scores each candidate on held-out
batches after recalibrating its BN statistics on `calibration_batches` training batches, and keeps the single
removal with the best accuracy, until the cost target is met. The descending pass is one list of points; it
is saved beside the supernet (`greedy-<hash>.json`) and continued, never redone, so every cost target of an
experiment reads its widths off one pass: the first point at or under its target. Trials of other targets wait for the pass on a lock file beside it
(a POSIX lock: on a shared filesystem without locking, two trials may both compute it, with the same result).

The found widths are trained from scratch like every method's (cost-matched to the target when `match`).
Search FLOPs: the supernet's training (every sandwich forward and backward) plus every candidate's
recalibration and evaluation forwards of the pass up to this target.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from widthtune.models.cost import CostModel
from widthtune.models.supernet import Supernet
from widthtune.models.widths import Widths, smallest_width
from widthtune.trainables.artifacts import ArtifactContext, ArtifactRecipe
from widthtune.trainables.hyperparameters import integer
from widthtune.trainables.method import Method
from widthtune.trainables.registry import register
from widthtune.trainables.supernet_training import (
    SUPERNET_FILE,
    Scorer,
    calibration_batches,
    held_out,
    supernet_for,
    supernet_recipe,
    trial_context,
)
from widthtune.trainables.task import SearchResult, Task

DEFAULTS: dict[str, Any] = {
    "width": 1.5,
    "n": 2,
    "epochs": None,
    "step": "twelfth",
    "calibration_batches": 5,
    "eval_batches": None,
    "match": True,
}
STEPS = ("twelfth", "divisor")
TWELFTHS = 12
SUPERNET = "supernet"


def steps(largest: Widths, kind: str) -> np.ndarray:
    """Channels one greedy step removes per group: its divisor, or 1/12 of its supernet width (divisor-rounded)."""
    values = []
    for group, width in zip(largest.space, largest.values, strict=True):
        if kind == "divisor":
            values.append(group.divisor)
        else:
            values.append(max(group.divisor, round(width / TWELFTHS / group.divisor) * group.divisor))
    return np.asarray(values, dtype=np.int64)


@dataclass
class GreedyPass:
    """One descending pass of greedy slimming: its points (widths, cost, accuracy, FLOPs spent so far)."""

    points: list[dict[str, Any]]
    finished: bool = False

    def at(self, target: float) -> dict[str, Any] | None:
        """The first point at or under `target` (None when the pass has not reached it yet)."""
        return next((p for p in self.points if p["cost"] <= target), None)


def slim(
    supernet: Supernet,
    score: Scorer,
    cost_model: CostModel,
    step: np.ndarray,
    target: float,
    convention: str = "macs",
    previous: GreedyPass | None = None,
) -> GreedyPass:
    """Continue (or start) the greedy pass until its last point costs at most `target` or nothing can go."""
    lowest = np.asarray(supernet.min_widths.values, dtype=np.int64)
    counted = score.flops  # the scorer's count when this call began
    if previous is None:
        first = supernet.max_widths
        accuracy = score(first)
        previous = GreedyPass(
            [
                {
                    "widths": list(first.values),
                    "cost": float(cost_model.cost(first, convention)),
                    "accuracy": accuracy,
                    "flops": score.flops - counted,
                }
            ]
        )
        counted = score.flops
    points = list(previous.points)
    spent = points[-1]["flops"]  # FLOPs of the pass so far
    current = np.asarray(points[-1]["widths"], dtype=np.int64)
    finished = previous.finished
    while points[-1]["cost"] > target and not finished:
        best: tuple[float, np.ndarray] | None = None
        for index in range(len(current)):
            candidate = current.copy()
            candidate[index] -= step[index]
            if candidate[index] < lowest[index]:
                if current[index] > lowest[index]:
                    candidate[index] = lowest[index]
                else:
                    continue
            accuracy = score(Widths(supernet.space, tuple(int(v) for v in candidate)))
            if best is None or accuracy > best[0]:
                best = (accuracy, candidate)
        if best is None:
            finished = True
            break
        current = best[1]
        points.append(
            {
                "widths": [int(v) for v in current],
                "cost": float(cost_model.cost(current.astype(np.float64), convention)),
                "accuracy": best[0],
                "flops": spent + score.flops - counted,
            }
        )
    return GreedyPass(points, finished)


def _pass_file(folder: Path, settings: Mapping[str, Any]) -> Path:
    text = json.dumps(dict(settings), sort_keys=True)
    return folder / f"greedy-{hashlib.sha256(text.encode()).hexdigest()[:10]}.json"


def _read_pass(path: Path) -> GreedyPass | None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return GreedyPass(saved["points"], bool(saved["finished"]))


def _write_pass(path: Path, greedy: GreedyPass) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"points": greedy.points, "finished": greedy.finished}))
    partial.replace(path)


def _epochs(params: Mapping[str, Any], context: ArtifactContext) -> int:
    epochs = params.get("epochs")
    return int(epochs) if epochs is not None else int(context.train.get("epochs", 30))


def recipe(params: Mapping[str, Any], context: ArtifactContext) -> ArtifactRecipe:
    """The supernet this method trains for these hyperparameters (sandwich rule, inplace distillation)."""
    merged = {**DEFAULTS, **params}
    return supernet_recipe(
        context,
        multiplier=float(merged["width"]),
        rule="sandwich",
        settings={"n": int(merged["n"])},
        epochs=_epochs(merged, context),
    )


def artifacts(params: Mapping[str, Any], context: ArtifactContext) -> Mapping[str, ArtifactRecipe]:
    """One shared supernet per recipe and seed."""
    return {SUPERNET: recipe(params, context)}


def _target(task: Task) -> float:
    if task.cost_target is not None:
        return float(task.cost_target)
    return 0.5 * float(task.cost_model.cost(Widths.base(task.space), task.convention))


def search(task: Task) -> SearchResult:
    """The supernet (shared), then the greedy pass (shared, continued) read at this trial's cost target."""
    params = {**DEFAULTS, **task.params}
    check(params)
    target = _target(task)
    narrowest = Widths(task.space, tuple(smallest_width(g) for g in task.space))
    lowest = float(task.cost_model.cost(narrowest, task.convention))
    if target < lowest * (1 - task.tolerance):
        raise ValueError(
            f"cost_target: {target:,.0f} ({task.convention}) is out of reach for autoslim: its smallest "
            f"sub-network costs {lowest:,.0f}"
        )
    need = recipe(params, trial_context(task))
    supernet, summary, note = supernet_for(task, SUPERNET, need)
    batch = min(task.train.batch_size, int(task.data.train_x.shape[0]))
    settings = {
        "supernet": need.key,
        "step": params["step"],
        "calibration_batches": int(params["calibration_batches"]),
        "eval_batches": params["eval_batches"],
        "batch_size": batch,
        "convention": task.convention,
    }
    score = Scorer(
        supernet,
        calibration_batches(task.data, batch, int(params["calibration_batches"]), task.seed),
        held_out(task.data, task.train.eval_batch_size, params["eval_batches"]),
        task.cost_model,
    )
    shared = task.artifacts.get(SUPERNET)
    folder = Path(shared).parent if shared and note.startswith("shared") else None
    step = steps(supernet.max_widths, str(params["step"]))
    if folder is None:
        previous = None
        greedy = slim(supernet, score, task.cost_model, step, target, task.convention)
    else:
        path = _pass_file(folder, settings)
        with open(path.with_suffix(".lock"), "w") as lock:  # trials of other targets wait, then read it
            fcntl.flock(lock, fcntl.LOCK_EX)
            previous = greedy = _read_pass(path)
            if previous is None or previous.at(target) is None:
                greedy = slim(supernet, score, task.cost_model, step, target, task.convention, previous)
                _write_pass(path, greedy)
    point = greedy.at(target) or greedy.points[-1]
    widths = Widths(task.space, tuple(point["widths"]))
    info = {
        "supernet": note,
        "supernet_file": str(shared) if shared else SUPERNET_FILE,
        "supernet_flops": summary.flops,
        "supernet_epochs": summary.epochs,
        "greedy_steps": greedy.points.index(point),
        "greedy_points": len(greedy.points),
        "greedy_reused": previous is not None and previous.at(target) is not None,
        "held_out_accuracy": point["accuracy"],
        "cost": point["cost"],
        "cost_target": target,
        "max_widths": supernet.max_widths.as_dict(),
    }
    return SearchResult(
        widths,
        search_flops=summary.flops + point["flops"],
        match_target=bool(params["match"]),
        info=info,
    )


def check(params: Mapping[str, Any]) -> None:
    """Every hyperparameter is in range; errors name the field and what is allowed."""
    merged = {**DEFAULTS, **params}
    width = merged["width"]
    if (
        isinstance(width, bool)
        or not isinstance(width, numbers.Real)
        or not math.isfinite(width)
        or width < 1
    ):
        raise ValueError(
            f"method.width: {width!r} is not allowed; choose a number >= 1 (the supernet's widening)"
        )
    integer("n", merged["n"], 0)
    integer("calibration_batches", merged["calibration_batches"])
    for name in ("epochs", "eval_batches"):
        if merged[name] is not None:
            integer(name, merged[name])
    if merged["step"] not in STEPS:
        raise ValueError(f"method.step: {merged['step']!r} is not allowed; choose one of: {', '.join(STEPS)}")
    if not isinstance(merged["match"], bool):
        raise ValueError(f"method.match: {merged['match']!r} is not allowed; choose true or false")


METHOD = register(
    Method(
        name="autoslim",
        search=search,
        defaults=DEFAULTS,
        summary="AutoSlim: sandwich-rule supernet with inplace distillation, greedy slimming to the target",
        check=check,
        artifacts=artifacts,
        widest=lambda params: float(params.get("width", DEFAULTS["width"])),
    )
)
