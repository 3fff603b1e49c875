"""`morphnet`: MorphNet's gamma-FLOP regulariser shrinks the widths, one multiplier expands them to the target.

Structure learning trains the model (`epochs`, default the recipe's, at the fixed learning rate `lr`,
default the recipe's) with strength / C0 x R added to the loss, where C0 is the base model's cost in the
task's convention and R is MorphNet's regulariser over the cost model's terms: a conv or linear costing
coef x w_out x w_in (every convention's cost is such a sum; a fixed channel count is folded into coef) adds

    coef x (alive_in x sum |gamma_out| + alive_out x sum |gamma_in|)

where a group's gammas are, per channel, the largest |gamma| over the group's BN members (a residual stream
is written by several BNs and is alive where any of them is), alive counts the channels whose gamma is above
`threshold` (1e-2; a count, so it carries no gradient), and a side without gammas (the image's channels, the
classes, a group without BN) counts all its channels as alive and adds no gamma sum. `strength` is therefore
in units of 1 / C0 (1.0: the default of 1 / the initial cost) and is searched on a log scale like any
hyperparameter.

After structure learning the alive counts (at least each group's smallest width) are the width shape, and one
multiplier (`models.match.match_cost`) scales it to the cost target (without one, the base model's cost).
With `rounds` > 1 the expanded widths are learned again from a fresh model and expanded again. Streams routed
by zero-pad (option A) shortcuts are not regularised (see models.inherit). Found widths are retrained from
scratch like every method's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from widthtune.models.cost import CostModel, Terms
from widthtune.models.inherit import pad_linked_groups
from widthtune.models.match import match_cost
from widthtune.models.registry import materialize
from widthtune.models.space import ChannelSpace
from widthtune.models.widths import Widths, smallest_width
from widthtune.trainables.hyperparameters import real
from widthtune.trainables.method import Method
from widthtune.trainables.registry import register
from widthtune.trainables.retraining import rescale_recipe
from widthtune.trainables.task import TRAIN_FLOPS_PER_MAC_PER_IMAGE, SearchResult, Task
from widthtune.training.loop import train

DEFAULTS: dict[str, Any] = {
    "strength": 1.0,  # x 1 / the base model's cost
    "threshold": 1e-2,
    "epochs": None,  # None: the recipe's epochs
    "lr": None,  # the fixed structure-learning rate; None: the recipe's lr
    "rounds": 1,
}
BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class Regularizer:
    """MorphNet's regulariser of one model: the cost terms and, per group, the BNs whose gammas it reads."""

    terms: Terms
    gammas: tuple[tuple[nn.Parameter, ...], ...]  # per group; empty: not regularised
    threshold: float
    widths: tuple[int, ...]  # the model's widths (a group without gammas is all alive)

    @classmethod
    def of(
        cls, model: nn.Module, cost_model: CostModel, widths: Widths, convention: str, threshold: float
    ) -> Regularizer:
        """Read the model's BN gammas per group (pad-linked streams excluded)."""
        modules = dict(model.named_modules())
        fixed = pad_linked_groups(model, cost_model.space)
        gammas = []
        for group in cost_model.space:
            members = (
                ()
                if group.name in fixed
                else tuple(
                    modules[m.path].weight
                    for m in group.members
                    if m.kind == "out"
                    and isinstance(modules.get(m.path), BN)
                    and modules[m.path].weight is not None
                )
            )
            gammas.append(members)
        return cls(cost_model.terms(convention), tuple(gammas), threshold, widths.values)

    def channel_gammas(self) -> list[Tensor | None]:
        """Per group, each channel's largest |gamma| over the group's BNs (None: not regularised)."""
        return [
            torch.stack([g.abs() for g in members]).amax(0) if members else None for members in self.gammas
        ]

    def alive(self) -> np.ndarray:
        """Channels per group whose gamma is above the threshold (all, where a group has no gammas)."""
        return np.asarray(
            [
                width if gamma is None else int((gamma.detach() > self.threshold).sum())
                for gamma, width in zip(self.channel_gammas(), self.widths, strict=True)
            ],
            dtype=np.int64,
        )

    def __call__(self, _: nn.Module | None = None) -> Tensor:
        """sum over terms of coef x (alive_b x sum|gamma_a| + alive_a x sum|gamma_b|) (the constant: 1 alive, 0)."""
        gammas = self.channel_gammas()
        device = next(g for members in self.gammas for g in members).device
        sums = torch.stack(
            [gamma.sum() if gamma is not None else torch.zeros((), device=device) for gamma in gammas]
            + [torch.zeros((), device=device)]
        )
        alive = torch.as_tensor(
            np.append(self.alive(), 1).astype(np.float64), dtype=sums.dtype, device=device
        )
        coef = torch.as_tensor(self.terms.coef, dtype=sums.dtype, device=device)
        a = torch.as_tensor(self.terms.a, device=device)
        b = torch.as_tensor(self.terms.b, device=device)
        return (coef * (alive[b] * sums[a] + alive[a] * sums[b])).sum()


def alive_shape(space: ChannelSpace, alive: np.ndarray) -> dict[str, float]:
    """The alive counts as a width shape: at least each group's smallest width."""
    return {g.name: float(max(int(a), smallest_width(g))) for g, a in zip(space, alive, strict=True)}


def _target(task: Task) -> float:
    if task.cost_target is not None:
        return float(task.cost_target)
    return float(task.cost_model.cost(Widths.base(task.space), task.convention))


def search(task: Task) -> SearchResult:
    """Structure-learn under the gamma-FLOP regulariser, take the alive shape, expand it to the target."""
    params = {**DEFAULTS, **task.params}
    check(params)
    cost_model, convention = task.cost_model, task.convention
    initial = float(cost_model.cost(Widths.base(task.space), convention))
    weight = float(params["strength"]) / initial
    epochs = int(params["epochs"] or task.train.epochs)
    lr = float(params["lr"]) if params["lr"] is not None else task.train.lr
    recipe = replace(rescale_recipe(task.train, epochs), lr=lr, schedule="constant", warmup_epochs=0.0)
    target = _target(task)
    widths, search_flops, rounds = Widths.base(task.space), 0.0, []
    for round_index in range(int(params["rounds"])):
        model = materialize(task.model, widths, seed=task.seed + round_index)
        regularizer = Regularizer.of(model, cost_model, widths, convention, float(params["threshold"]))
        if not any(regularizer.gammas):
            raise ValueError(
                f"method.name: morphnet needs BN layers to read gammas from; {task.model} has none"
            )
        history = train(model, task.data, recipe, regularizer=lambda m, r=regularizer: weight * r())
        images = history.final.images_seen
        search_flops += TRAIN_FLOPS_PER_MAC_PER_IMAGE * float(cost_model.cost(widths, "macs")) * images
        alive = regularizer.alive()
        shape = alive_shape(task.space, alive)
        matched = match_cost(shape, target, cost_model, convention=convention, tolerance=task.tolerance)
        rounds.append(
            {
                "alive": dict(zip(task.space.names, (int(a) for a in alive), strict=True)),
                "alive_cost": float(cost_model.cost(np.asarray(list(shape.values())), convention)),
                "multiplier": matched.multiplier,
                "regularizer": float(regularizer().detach()),
                "images_seen": images,
            }
        )
        widths = matched.widths
    cost = float(cost_model.cost(widths, convention))
    info = {
        "strength": float(params["strength"]),
        "weight": weight,
        "threshold": float(params["threshold"]),
        "epochs": epochs,
        "lr": lr,
        "rounds": rounds,
        "cost": cost,
        "cost_target": target,
        "convention": convention,
        "relative_error": (cost - target) / target,
    }
    return SearchResult(widths, search_flops=search_flops, match_target=True, info=info)


def check(params: Mapping[str, Any]) -> None:
    """Every hyperparameter is in range; errors name the field and what is allowed."""
    merged = {**DEFAULTS, **params}
    if not real("strength", merged["strength"]) >= 0:
        raise ValueError(
            f"method.strength: {merged['strength']!r} is not allowed; choose a number >= 0 "
            "(in units of 1 / the model's initial cost)"
        )
    if not real("threshold", merged["threshold"]) > 0:
        raise ValueError(f"method.threshold: {merged['threshold']!r} is not allowed; choose a number > 0")
    if merged["lr"] is not None and not real("lr", merged["lr"]) > 0:
        raise ValueError(f"method.lr: {merged['lr']!r} is not allowed; choose a number > 0 (or null)")
    for name, low, none in (("epochs", 1, True), ("rounds", 1, False)):
        value = merged[name]
        if none and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"method.{name}: {value!r} is not allowed; choose an integer >= {low}")


METHOD = register(
    Method(
        name="morphnet",
        search=search,
        defaults=DEFAULTS,
        summary="MorphNet: gamma-FLOP regulariser, alive channels as the shape, one multiplier to the target",
        check=check,
    )
)
