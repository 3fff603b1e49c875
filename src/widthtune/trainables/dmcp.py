"""`dmcp`: Differentiable Markov Channel Pruning -- learn each group's width as a Markov chain of keep decisions.

The base model widened by `widen` (the largest widths the search may reach) is trained as a supernet; each
channel group's channels split into a minimum (`min_ratio` of its widened width, never pruned) and up to
`subgroups` equal sub-groups after it (a remainder that does not divide evenly joins the minimum). Sub-group
i has an architecture parameter alpha_i; sigmoid(alpha_i) is the probability of keeping sub-group i given
that sub-group i-1 is kept, so the marginal keep probability of sub-group i is the cumulative product
prod_{j<=i} sigmoid(alpha_j), and the expected width is minimum + size x sum_i marginal_i. A group of the
channel space is already every layer coupled to it (a residual stream is one group), so coupled layers share
one chain.

Training (`epochs`, default the recipe's): every step trains the weights by the sandwich rule -- the widest
network learns from the labels, the narrowest (every group at its minimum) and `random_widths` sampled ones
learn from the widest network's soft targets (distillation, `temperature`) -- one SGD step on the summed
gradients under the recipe's schedule. Sub-networks are the widened model with each group's channels after
its width scaled to zero (models/channel_scale). Sampled widths are uniform over each chain's states before
the architecture starts training and drawn from the chains after. From `arch_start` (a fraction of the
epochs) on, each step also takes one Adam step (`arch_lr`, `arch_weight_decay`) on the alphas alone: the
widened model run with each sub-group scaled by its marginal keep probability, cross-entropy plus
`cost_weight` x DMCP's cost loss on the expected widths' cost (the arithmetic cost model is bilinear in the
widths, so the expected cost is differentiable in the alphas): zero inside [band x T, T], the log-L1
distance to T below band x T and to band x T above T, where T is the cost target in the task's convention
(one unit throughout; without a target, the base model's cost).

Export (`export`): `expected` rounds the expected widths to each group's divisor (the platform then scales
them by one multiplier onto the target); `sample` draws `samples` width vectors from the chains and takes
the most probable one whose cost is within `sample_tolerance` of the target. Found widths are retrained from
scratch like every method's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from widthtune.models.channel_scale import ChannelScaler, prefix_mask
from widthtune.models.registry import materialize
from widthtune.models.space import ChannelSpace
from widthtune.models.widths import Widths, round_width, smallest_width
from widthtune.trainables.hyperparameters import integer, real
from widthtune.trainables.method import Method
from widthtune.trainables.registry import register
from widthtune.trainables.retraining import rescale_recipe
from widthtune.trainables.task import TRAIN_FLOPS_PER_MAC_PER_IMAGE, SearchResult, Task
from widthtune.training.loop import learning_rate, resolve_device

DEFAULTS: dict[str, Any] = {
    "widen": 1.5,  # the supernet's widths over the base (AutoSlim's 1.5x); the widest the result may be
    "min_ratio": 0.1,  # each group's unprunable minimum, as a fraction of its widened width
    "subgroups": 9,  # equal sub-groups after the minimum (0.1 of the width each, with min_ratio 0.1)
    "epochs": None,  # None: the recipe's epochs
    "arch_start": 0.5,  # the architecture trains from this fraction of the epochs on
    "arch_lr": 0.01,
    "arch_weight_decay": 0.0,
    "alpha_init": 2.0,  # sigmoid(2) = 0.88 keep probability per step of the chain
    "cost_weight": 0.1,
    "band": 0.95,  # the cost loss is zero in [band x target, target]
    "random_widths": 2,  # sampled sub-networks per step besides the widest and the narrowest
    "temperature": 1.0,  # of the distillation from the widest network
    "export": "expected",
    "samples": 1000,
    "sample_tolerance": 0.01,
}
EXPORTS = ("expected", "sample")


@dataclass(frozen=True)
class Chain:
    """One group's Markov chain: an unprunable minimum, then `count` sub-groups of `size` channels each."""

    minimum: int
    size: int
    count: int

    @property
    def total(self) -> int:
        """The widened width: minimum + count x size."""
        return self.minimum + self.size * self.count


def chains(space: ChannelSpace, widest: Widths, min_ratio: float, subgroups: int) -> list[Chain]:
    """Each group's chain over its widened width; sub-groups are whole divisor steps where the group has one."""
    out = []
    for group in space:
        total = widest[group.name]
        floor = max(smallest_width(group), round_width(min_ratio * total, group))
        floor = min(floor, total)
        room = (total - floor) // group.divisor  # divisor steps above the minimum
        count = min(subgroups, room)
        size = (room // count) * group.divisor if count else 0
        out.append(Chain(total - size * count, size, count))
    return out


def marginals(alphas: Tensor) -> Tensor:
    """Marginal keep probabilities: the cumulative product of sigmoid(alpha) along the chain."""
    return torch.cumprod(torch.sigmoid(alphas), dim=-1)


def expected_width(chain: Chain, alphas: Tensor) -> Tensor:
    """minimum + size x the sum of the marginal keep probabilities (differentiable in the alphas)."""
    if chain.count == 0:
        return alphas.new_tensor(float(chain.minimum))
    return chain.minimum + chain.size * marginals(alphas).sum()


def expected_widths(group_chains: list[Chain], alphas: list[Tensor]) -> Tensor:
    """Every group's expected width, in group order."""
    return torch.stack([expected_width(c, a) for c, a in zip(group_chains, alphas, strict=True)])


def soft_mask(chain: Chain, alphas: Tensor) -> Tensor:
    """Per channel: 1 on the minimum, the sub-group's marginal keep probability after it."""
    ones = alphas.new_ones(chain.minimum)
    if chain.count == 0:
        return ones
    return torch.cat([ones, marginals(alphas).repeat_interleave(chain.size)])


def cost_loss(expected: Tensor, target: float, band: float) -> Tensor:
    """DMCP's cost loss: zero in [band x T, T]; |log E - log T| below band x T, |log E - log(band x T)| above T."""
    low = band * target
    value = float(expected.detach())
    if value < low:
        return (torch.log(expected) - math.log(target)).abs()
    if value > target:
        return (torch.log(expected) - math.log(low)).abs()
    return expected * 0.0


def sample_counts(
    group_chains: list[Chain], keep: list[np.ndarray] | None, rng: np.random.Generator, n: int
) -> np.ndarray:
    """`n` draws of each chain's kept sub-groups, shape (n, groups): uniform over states, or from the chains."""
    counts = np.zeros((n, len(group_chains)), dtype=np.int64)
    for g, chain in enumerate(group_chains):
        if chain.count == 0:
            continue
        if keep is None:
            counts[:, g] = rng.integers(0, chain.count + 1, size=n)
        else:
            kept = rng.random((n, chain.count)) < keep[g][None, :]
            counts[:, g] = np.cumprod(kept, axis=1).sum(axis=1)
    return counts


def widths_of(group_chains: list[Chain], counts: np.ndarray) -> np.ndarray:
    """Widths (..., groups) of kept sub-group counts."""
    minimum = np.asarray([c.minimum for c in group_chains])
    size = np.asarray([c.size for c in group_chains])
    return minimum + size * counts


def log_probability(group_chains: list[Chain], keep: list[np.ndarray], counts: np.ndarray) -> np.ndarray:
    """Log-probability of each row of kept counts under the chains: kept steps, then the first refused one."""
    total = np.zeros(counts.shape[0])
    for g, chain in enumerate(group_chains):
        if chain.count == 0:
            continue
        logs = np.log(np.clip(keep[g], 1e-12, 1.0))
        refuse = np.log(np.clip(1.0 - keep[g], 1e-12, 1.0))
        cumulative = np.concatenate([[0.0], np.cumsum(logs)])
        k = counts[:, g]
        total += cumulative[k] + np.where(k < chain.count, refuse[np.minimum(k, chain.count - 1)], 0.0)
    return total


def _target(task: Task) -> float:
    if task.cost_target is not None:
        return float(task.cost_target)
    return float(task.cost_model.cost(Widths.base(task.space), task.convention))


class _Supernet:
    """The widened model with channel scaling hooks, the alphas and the two optimisers."""

    def __init__(self, task: Task, params: Mapping[str, Any], widest: Widths, device: torch.device) -> None:
        self.task, self.device = task, device
        self.model = materialize(task.model, widest, seed=task.seed).to(device)
        self.scaler = ChannelScaler(self.model, task.space)
        self.chains = chains(task.space, widest, float(params["min_ratio"]), int(params["subgroups"]))
        self.alphas = [
            torch.full((c.count,), float(params["alpha_init"]), device=device, requires_grad=True)
            for c in self.chains
        ]

    def at_counts(self, counts: np.ndarray) -> dict[str, Tensor]:
        """Hard masks: each group keeps its minimum and its first `counts[g]` sub-groups."""
        widths = widths_of(self.chains, counts)
        return {
            group.name: prefix_mask(int(w), c.total, self.device)
            for group, w, c in zip(self.task.space, widths, self.chains, strict=True)
        }

    def expected_masks(self) -> dict[str, Tensor]:
        """Soft masks: each channel scaled by its sub-group's marginal keep probability."""
        return {
            group.name: soft_mask(c, a)
            for group, c, a in zip(self.task.space, self.chains, self.alphas, strict=True)
        }

    def keep(self) -> list[np.ndarray]:
        """Each chain's step keep probabilities sigmoid(alpha)."""
        return [torch.sigmoid(a).detach().cpu().double().numpy() for a in self.alphas]


def train_supernet(task: Task, params: Mapping[str, Any], net: _Supernet, target: float) -> dict[str, Any]:
    """Sandwich-rule weight steps throughout, Adam steps on the alphas from `arch_start`; returns what it spent."""
    epochs = int(params["epochs"] or task.train.epochs)
    recipe = rescale_recipe(task.train, epochs)
    weights = [p for p in net.model.parameters() if p.requires_grad]
    weight_optimizer = torch.optim.SGD(
        weights,
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
    )
    arch_optimizer = torch.optim.Adam(
        net.alphas, lr=float(params["arch_lr"]), weight_decay=float(params["arch_weight_decay"])
    )
    loader = task.data.train_batches(
        recipe.batch_size,
        augment=recipe.augment,
        drop_last=recipe.drop_last,
        seed=task.seed,
        device=net.device,
    )
    rng = np.random.default_rng(task.seed)
    first_arch_epoch = math.floor(float(params["arch_start"]) * epochs) + 1
    narrowest = np.zeros(len(net.chains), dtype=np.int64)
    widest_counts = np.asarray([c.count for c in net.chains], dtype=np.int64)
    random_widths, temperature = int(params["random_widths"]), float(params["temperature"])
    step, pass_images, images, arch_steps = 0, 0, 0, 0
    last: dict[str, float] = {}
    net.model.train()
    with torch.random.fork_rng(devices=[net.device.index or 0] if net.device.type == "cuda" else []):
        torch.manual_seed(task.seed)
        for epoch in range(1, epochs + 1):
            arch = epoch >= first_arch_epoch
            for x, y in loader:
                lr = learning_rate(recipe, step, len(loader))
                for group in weight_optimizer.param_groups:
                    group["lr"] = lr
                weight_optimizer.zero_grad(set_to_none=True)
                net.scaler.scales = net.at_counts(widest_counts)
                logits = net.model(x)
                F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing).backward()
                soft = F.softmax(logits.detach() / temperature, dim=1)
                sampled = sample_counts(net.chains, net.keep() if arch else None, rng, random_widths)
                for counts in [narrowest, *sampled]:
                    net.scaler.scales = net.at_counts(counts)
                    student = F.log_softmax(net.model(x) / temperature, dim=1)
                    distill = F.kl_div(student, soft, reduction="batchmean") * temperature**2
                    distill.backward()
                weight_optimizer.step()
                pass_images += len(y) * (2 + len(sampled))
                if arch:
                    arch_optimizer.zero_grad(set_to_none=True)
                    net.scaler.scales = net.expected_masks()
                    expected = task.cost_model.cost_tensor(
                        expected_widths(net.chains, net.alphas).double(), task.convention
                    )
                    penalty = cost_loss(expected, target, float(params["band"]))
                    task_loss = F.cross_entropy(net.model(x), y)
                    loss = task_loss + float(params["cost_weight"]) * penalty
                    alpha_grads = torch.autograd.grad(loss, net.alphas, allow_unused=True)
                    for alpha, grad in zip(net.alphas, alpha_grads, strict=True):
                        alpha.grad = grad
                    arch_optimizer.step()
                    pass_images += len(y)
                    arch_steps += 1
                    last = {"task_loss": float(task_loss.detach()), "cost_loss": float(penalty.detach())}
                images += len(y)
                step += 1
    net.scaler.scales = {}
    return {"epochs": epochs, "pass_images": pass_images, "images": images, "arch_steps": arch_steps, **last}


def export_widths(
    net: _Supernet, params: Mapping[str, Any], target: float, rng: np.random.Generator
) -> tuple[Widths, dict[str, Any]]:
    """The expected widths rounded to each group's divisor, or the most probable sample near the target."""
    space, cost_model, convention = net.task.space, net.task.cost_model, net.task.convention
    with torch.no_grad():
        expected = expected_widths(net.chains, net.alphas).cpu().double().numpy()
    info: dict[str, Any] = {"expected_widths": dict(zip(space.names, expected.tolist(), strict=True))}
    if params["export"] == "expected":
        values = [
            min(round_width(float(e), g), c.total)
            for g, e, c in zip(space, expected, net.chains, strict=True)
        ]
        return Widths(space, tuple(values)), info
    keep = net.keep()
    counts = sample_counts(net.chains, keep, rng, int(params["samples"]))
    values = widths_of(net.chains, counts)
    costs = np.asarray(cost_model.cost(values.astype(np.float64), convention)).reshape(-1)
    errors = np.abs(costs - target) / target
    near = errors <= float(params["sample_tolerance"])
    info["samples_within_tolerance"] = int(near.sum())
    if near.any():
        scores = np.where(near, log_probability(net.chains, keep, counts), -np.inf)
        best = int(np.argmax(scores))
    else:
        best = int(np.argmin(errors))
    info["sample_cost_error"] = float((costs[best] - target) / target)
    return Widths(space, tuple(int(v) for v in values[best])), info


def search(task: Task) -> SearchResult:
    """Train the widened supernet and the chains, export widths from the chains."""
    params = {**DEFAULTS, **task.params}
    check(params)
    device = resolve_device(task.train.device)
    widest = Widths.base(task.space).scale(float(params["widen"]))
    net = _Supernet(task, params, widest, device)
    target = _target(task)
    spent = train_supernet(task, params, net, target)
    net.scaler.remove()
    widths, info = export_widths(net, params, target, np.random.default_rng(task.seed + 1))
    cost = float(task.cost_model.cost(widths, task.convention))
    with torch.no_grad():
        expected_cost = float(
            task.cost_model.cost_tensor(expected_widths(net.chains, net.alphas).double(), task.convention)
        )
    info.update(
        {
            "widen": float(params["widen"]),
            "export": params["export"],
            "chains": {
                g.name: {"minimum": c.minimum, "size": c.size, "count": c.count}
                for g, c in zip(task.space, net.chains, strict=True)
            },
            "keep_probabilities": {g.name: k.tolist() for g, k in zip(task.space, net.keep(), strict=True)},
            "expected_cost": expected_cost,
            "cost": cost,
            "cost_target": target,
            "convention": task.convention,
            **spent,
        }
    )
    # every pass runs the whole widened model (masked channels are computed, then zeroed)
    widened_macs = float(task.cost_model.cost(widest, "macs"))
    search_flops = TRAIN_FLOPS_PER_MAC_PER_IMAGE * widened_macs * spent["pass_images"]
    return SearchResult(
        widths,
        search_flops=float(search_flops),
        match_target=params["export"] == "expected",
        info=info,
    )


def check(params: Mapping[str, Any]) -> None:
    """Every hyperparameter is in range; errors name the field and what is allowed."""
    merged = {**DEFAULTS, **params}
    if not real("widen", merged["widen"]) >= 1:
        raise ValueError(f"method.widen: {merged['widen']!r} is not allowed; choose a number >= 1")
    for name in ("min_ratio", "arch_start"):
        if not 0 <= real(name, merged[name]) < 1:
            raise ValueError(f"method.{name}: {merged[name]!r} is not allowed; choose a number in [0, 1)")
    for name in ("band", "sample_tolerance"):
        if not 0 < real(name, merged[name]) < 1:
            raise ValueError(f"method.{name}: {merged[name]!r} is not allowed; choose a number in (0, 1)")
    for name in ("arch_lr", "temperature"):
        if not real(name, merged[name]) > 0:
            raise ValueError(f"method.{name}: {merged[name]!r} is not allowed; choose a number > 0")
    for name in ("arch_weight_decay", "cost_weight"):
        if not real(name, merged[name]) >= 0:
            raise ValueError(f"method.{name}: {merged[name]!r} is not allowed; choose a number >= 0")
    real("alpha_init", merged["alpha_init"])
    integer("subgroups", merged["subgroups"], 1)
    integer("random_widths", merged["random_widths"], 0)
    integer("samples", merged["samples"], 1)
    if merged["epochs"] is not None:
        integer("epochs", merged["epochs"], 1)
    if merged["export"] not in EXPORTS:
        raise ValueError(
            f"method.export: {merged['export']!r} is not allowed; choose one of: {', '.join(EXPORTS)}"
        )


METHOD = register(
    Method(
        name="dmcp",
        search=search,
        defaults=DEFAULTS,
        summary="DMCP: Markov keep probabilities per sub-group on a widened supernet, expected cost to the target",
        check=check,
        widest=lambda params: float(params.get("widen", DEFAULTS["widen"])),
    )
)
