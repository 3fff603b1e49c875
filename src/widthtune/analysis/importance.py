"""Hyperparameter importance per method: Optuna's evaluators (fANOVA, else mean decrease impurity) on the stored
completed trials, rebuilt as an in-memory Optuna study whose objective is the final validation accuracy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.importance import (
    FanovaImportanceEvaluator,
    MeanDecreaseImpurityImportanceEvaluator,
    get_param_importances,
)

from widthtune.analysis.hyperparameters import Scalar, study_searched_keys, trial_params
from widthtune.analysis.plots import save_figure

# below this many completed trials an importance is noise
MIN_TRIALS = 4
MIN_PARAMS = 2
# fANOVA forest size: 16 trees give importances within ~0.02 of Optuna's 64 on a 100-trial sweep, in a third of
# the time the report adds after the last trial
FANOVA_TREES = 16


@dataclass(frozen=True)
class Importance:
    """One method's importances (summing to 1, most important first), or why there are none."""

    group: str
    trials: int
    evaluator: str = ""
    importances: tuple[tuple[str, float], ...] = ()
    skipped: str = ""


def distribution(values: Sequence[Scalar]) -> BaseDistribution:
    """The Optuna distribution that the stored values were drawn from, as far as they show."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return IntDistribution(min(values), max(values))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return FloatDistribution(float(min(values)), float(max(values)))
    return CategoricalDistribution(sorted(set(values), key=repr))


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def param_importance(group: str, trials: list[dict[str, Any]]) -> Importance:
    """The importance of each hyperparameter searched in these trials' studies for their validation accuracy."""
    completed = [t for t in trials if t["status"] == "completed" and t["final_val_acc"] is not None]
    if len(completed) < MIN_TRIALS:
        return Importance(
            group, len(completed), skipped=f"{len(completed)} completed trials (needs {MIN_TRIALS})"
        )
    params = [trial_params(t) for t in completed]
    searched = sorted({k for keys in study_searched_keys(trials).values() for k in keys})
    keys = [k for k in searched if all(k in p for p in params) and len({repr(p[k]) for p in params}) > 1]
    if len(keys) < MIN_PARAMS:
        return Importance(
            group, len(completed), skipped=f"{len(keys)} searched hyperparameters vary (needs {MIN_PARAMS})"
        )
    values = [float(t["final_val_acc"]) for t in completed]
    if len(set(values)) < 2:
        return Importance(group, len(completed), skipped="every completed trial scored the same")
    distributions = {k: distribution([p[k] for p in params]) for k in keys}
    with _quiet_optuna():
        study = optuna.create_study(direction="maximize")
        for p, value in zip(params, values, strict=True):
            study.add_trial(
                optuna.trial.create_trial(
                    params={k: p[k] for k in keys}, distributions=distributions, value=value
                )
            )
        try:
            found = get_param_importances(
                study, evaluator=FanovaImportanceEvaluator(n_trees=FANOVA_TREES, seed=0)
            )
            evaluator = "fANOVA"
        except (ValueError, RuntimeError, ArithmeticError):
            found = get_param_importances(study, evaluator=MeanDecreaseImpurityImportanceEvaluator(seed=0))
            evaluator = "mean decrease impurity"
    ranked = tuple(sorted(((k, float(v)) for k, v in found.items()), key=lambda kv: -kv[1]))
    return Importance(group, len(completed), evaluator, ranked)


def importance_plot(found: Sequence[Importance], path: Path) -> Path | None:
    """A bar chart per method of its importances (None when no method has any)."""
    shown = [f for f in found if f.importances]
    if not shown:
        return None
    height = sum(0.28 * len(f.importances) + 0.8 for f in shown)
    fig, axes = plt.subplots(len(shown), 1, figsize=(6.4, max(2.4, height)), squeeze=False)
    for ax, f in zip(axes[:, 0], shown, strict=True):
        names = [k for k, _ in f.importances][::-1]
        ax.barh(names, [v for _, v in f.importances][::-1], color="C0")
        ax.set_title(f"{f.group}: {f.evaluator} over {f.trials} completed trials", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlim(0, 1)
    axes[-1, 0].set_xlabel("importance for validation accuracy (sums to 1)")
    return save_figure(fig, path)
