"""`lwdna`: widen by beta, score each channel by |dL/dz| of its hypernetwork latent, shrink to the target.

The Heterogeneity Hypothesis (LW-DNA): the base model widened by `beta` is reparameterised by hypernetworks
(models/hypernet.py), `batches` random training mini-batches give the gradient magnitude of the loss with
respect to every latent element (summed over batches), and a bisection over the threshold keeps the
channels scoring above it so that the shrunk widths' cost equals the target (the bisection runs over the
sorted scores, so the threshold is the score of the last channel admitted; ties break by group, channel). Floors: a group keeps at least
`rho` of its reference width (`tau` for groups feeding a linear layer -- the classifier's input); the
reference is the base width (`floor_reference="base"`, the paper's C(rho c, beta c)) or the widened width
(`"widened"`, the reference code's). Integer widths make the cost move in steps; when the bisected threshold
misses the tolerance, `models.match.refine_widths` takes whole divisor steps of single groups, or of one group
against another, between the floors and the widened widths until the cost is within it; each group then
keeps its best-scoring channels (the ranking decides which channels, the refinement how many).
Without a cost target the target is the base model's cost in the task's convention: the paper shrinks the
widened net back to the baseline's budget (its Table 1 lands at 90-99% of it). A `cost_target: {ratio: r}` is
r of the base model's cost, as everywhere; `ratio_reference: widened` reads r as the reference code does, of
the widened net's cost (0.23 of ResNet-56 x2 is about 0.92 of ResNet-56).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from widthtune.models.cost import CostModel
from widthtune.models.hypernet import Hypernet, layout_groups, reparameterize, shrink
from widthtune.models.inherit import Slice, readable_channels, selection_reads
from widthtune.models.match import refine_widths
from widthtune.models.space import ChannelSpace
from widthtune.models.widths import Widths, smallest_width
from widthtune.trainables.hyperparameters import real
from widthtune.trainables.method import Method
from widthtune.trainables.registry import register
from widthtune.trainables.task import TRAIN_FLOPS_PER_MAC_PER_IMAGE, SearchResult, Task
from widthtune.training.datasets import DatasetSplits
from widthtune.training.loop import resolve_device

DEFAULTS: dict[str, Any] = {
    "beta": 2.0,
    "rho": 0.4,
    "tau": 0.45,
    "m": 8,
    "batches": 1,
    "floor_reference": "base",
    "init": "random",
    "tolerance": 0.001,
    "ratio_reference": "base",
}
FLOOR_REFERENCES = ("base", "widened")
RATIO_REFERENCES = ("base", "widened")  # what a cost_target ratio is a share of
INITS = ("random", "hypernet")
# forward + backward = 3 x forward; a forward pass is 2 FLOPs per MAC
# a refinement move: one divisor step of a group against up to this many steps of another (or of itself)
MAX_STEPS = 8


def latent_scores(
    hypernet: Hypernet, data: DatasetSplits, batch_size: int, batches: int, seed: int
) -> dict[str, np.ndarray]:
    """|dL/dz| per latent element, summed over `batches` seeded random training mini-batches (train mode)."""
    device = next(iter(hypernet.latents.values())).device
    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, data.train_x.shape[0])
    names = list(hypernet.latents)
    totals = {name: torch.zeros_like(z, requires_grad=False) for name, z in hypernet.latents.items()}
    hypernet.train()
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.enable_grad(), torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)  # dropout masks, where the model has dropout
        for _ in range(batches):
            index = torch.randperm(data.train_x.shape[0], generator=generator)[:size]
            x, y = data.train_x[index].to(device), data.train_y[index].to(device)
            loss = F.cross_entropy(hypernet(x), y)
            grads = torch.autograd.grad(loss, [hypernet.latents[name] for name in names])
            for name, grad in zip(names, grads, strict=True):
                totals[name] += grad.detach().abs()
    return {name: total.double().cpu().numpy() for name, total in totals.items()}


def floors(
    space: ChannelSpace,
    widened: Widths,
    rho: float,
    tau: float,
    reference: str,
    classifier_inputs: frozenset[str],
) -> np.ndarray:
    """Fewest channels a group may keep: ceil(rho x reference), tau for classifier inputs; legal widths."""
    values = []
    for group in space:
        ref = group.base if reference == "base" else widened[group.name]
        fraction = tau if group.name in classifier_inputs else rho
        need = max(math.ceil(fraction * ref - 1e-9), smallest_width(group))
        need = math.ceil(need / group.divisor) * group.divisor
        values.append(min(need, widened[group.name]))
    return np.asarray(values, dtype=np.int64)


class _Shrinker:
    """Widths as a function of how many top-scoring channels are admitted, and their cost."""

    def __init__(
        self,
        scores: list[np.ndarray],
        widened: np.ndarray,
        floors: np.ndarray,
        divisors: np.ndarray,
        cost_model: CostModel,
        convention: str,
    ) -> None:
        self.scores, self.widened, self.floors, self.divisors = scores, widened, floors, divisors
        self.cost_model, self.convention = cost_model, convention
        flat = np.concatenate(scores)
        group = np.concatenate([np.full(len(s), g) for g, s in enumerate(scores)])
        channel = np.concatenate([np.arange(len(s)) for s in scores])
        self.order = np.lexsort((channel, group, -flat))  # best first; ties by group, then channel
        self.flat, self.group = flat, group

    def widths(self, admitted: int) -> np.ndarray:
        """Each group's width when the `admitted` best channels are kept: floors, then divisor steps."""
        counts = np.bincount(self.group[self.order[:admitted]], minlength=len(self.scores))
        stepped = np.ceil(counts / self.divisors).astype(np.int64) * self.divisors
        return np.minimum(self.widened, np.maximum(self.floors, stepped))

    def cost(self, widths: np.ndarray) -> np.ndarray:
        """Cost in the task's convention, for one width vector or a batch."""
        return np.asarray(self.cost_model.cost(widths.astype(np.float64), self.convention))

    def threshold(self, admitted: int) -> float | None:
        """The score of the last admitted channel (None when none is admitted above the floors)."""
        return float(self.flat[self.order[admitted - 1]]) if admitted > 0 else None

    def bisect(self, target: float) -> int:
        """How many channels to admit: of the two around the crossing, the one whose cost is nearer."""
        low, high = 0, len(self.order)
        while low < high:  # smallest count whose cost reaches the target (cost is monotone in it)
            mid = (low + high) // 2
            if float(self.cost(self.widths(mid))) >= target:
                high = mid
            else:
                low = mid + 1
        candidates = [c for c in (low - 1, low) if 0 <= c <= len(self.order)]
        return min(candidates, key=lambda c: abs(float(self.cost(self.widths(c))) - target))

    def kept(self, widths: np.ndarray) -> list[list[int]]:
        """Each group's `width` best-scoring channels, in channel order."""
        kept = []
        for scores, width in zip(self.scores, widths, strict=True):
            ranked = np.lexsort((np.arange(len(scores)), -scores))
            kept.append(sorted(int(i) for i in ranked[: int(width)]))
        return kept


def readable(
    kept: dict[str, list[int]],
    scores: Mapping[str, np.ndarray],
    reads: Mapping[str, tuple[Slice, tuple[int, ...]]],
) -> dict[str, list[int]]:
    """Kept channels where each channel selection keeps only channels whose source is kept: its best-scoring
    readable ones, so the width stays (a selection never holds more channels than its source)."""
    kept = dict(kept)
    for group, (source, sources) in reads.items():
        readable = list(readable_channels(source, sources, kept))
        width = len(kept[group])
        if len(readable) < width:
            raise ValueError(
                f"lwdna: {group} keeps {width} channels but only {len(readable)} of the channels it selects "
                f"are kept in {'+'.join(name or 'fixed' for name, _ in source.parts)}, and a selection "
                "cannot pass on more channels than it reads; "
                "build the model without selections (select=false)"
            )
        values = np.asarray(scores[group])[readable]
        ranked = np.lexsort((np.arange(len(values)), -values))
        kept[group] = sorted(readable[int(i)] for i in ranked[:width])
    return kept


RATIO_KEY = "cost_target.ratio"  # the flat trial key of a ratio cost target


def _target(task: Task, widened: Widths, reference: str) -> float:
    """The cost to shrink to: the task's target (a ratio of the base, or of the widened net), else the base's."""
    base = float(task.cost_model.cost(Widths.base(task.space), task.convention))
    if task.cost_target is None:
        return base  # the baseline's own budget
    if reference == "base":
        return float(task.cost_target)
    if RATIO_KEY not in task.trial_params:
        raise ValueError(
            "method.ratio_reference: 'widened' reads cost_target.ratio as a share of the widened net; this "
            "trial's cost target is absolute (give cost_target: {ratio: ...}, or ratio_reference: base)"
        )
    return float(task.cost_target) / base * float(task.cost_model.cost(widened, task.convention))


def search(task: Task) -> SearchResult:
    """Widen, score latents on a few mini-batches, bisect the threshold to the cost target, keep the best."""
    params = {**DEFAULTS, **task.params}
    check(params)
    beta, rho, tau = float(params["beta"]), float(params["rho"]), float(params["tau"])
    tolerance = float(params["tolerance"])
    space, cost_model = task.space, task.cost_model
    widened = Widths.base(space).scale(beta)
    hypernet = reparameterize(task.model, widened, m=int(params["m"]), seed=task.seed)
    hypernet = hypernet.to(resolve_device(task.train.device))
    batch = min(task.train.batch_size, int(task.data.train_x.shape[0]))
    scores = latent_scores(hypernet, task.data, batch, int(params["batches"]), task.seed)
    classifier_inputs = frozenset(
        name for layer in hypernet.layers if layer.linear for name in layout_groups(layer.in_layout)
    )
    lowest = floors(space, widened, rho, tau, str(params["floor_reference"]), classifier_inputs)
    shrinker = _Shrinker(
        [scores[name] for name in space.names],
        np.asarray(widened.values, dtype=np.int64),
        lowest,
        np.asarray([g.divisor for g in space], dtype=np.int64),
        cost_model,
        task.convention,
    )
    target = _target(task, widened, str(params["ratio_reference"]))
    low, high = float(shrinker.cost(lowest)), float(shrinker.cost(shrinker.widened))
    if not low * (1 - tolerance) <= target <= high * (1 + tolerance):
        raise ValueError(
            f"cost_target: {target:,.0f} ({task.convention}) is out of reach for lwdna; with beta={beta:g}, "
            f"rho={rho:g}, tau={tau:g} (floor_reference={params['floor_reference']}) the reachable range is "
            f"{low:,.0f} to {high:,.0f}"
        )
    admitted = shrinker.bisect(target)
    refined = refine_widths(
        shrinker.widths(admitted),
        target,
        cost_model,
        task.convention,
        tolerance=tolerance,
        lower=lowest,
        upper=shrinker.widened,
        steps=shrinker.divisors,
        max_steps=MAX_STEPS,
    )
    values, cost = refined.values, refined.cost
    if abs(cost - target) > tolerance * target:
        raise ValueError(
            f"cost_target: {target:,.0f} ({task.convention}) cannot be met within {tolerance:.2%} by lwdna: the "
            f"closest widths cost {cost:,.0f} ({(cost - target) / target:+.3%}); lower the groups' divisor"
        )
    widths = Widths(space, tuple(int(v) for v in values))
    kept = readable(
        dict(zip(space.names, shrinker.kept(values), strict=True)),
        scores,
        selection_reads(hypernet.model, space.rebased(widened)),
    )
    weights = None
    if params["init"] == "hypernet":
        weights = {k: v.cpu() for k, v in shrink(hypernet, kept).state_dict().items()}
    widened_macs = float(cost_model.cost(widened, "macs"))
    info = {
        "beta": beta,
        "rho": rho,
        "tau": tau,
        "m": int(params["m"]),
        "batches": int(params["batches"]),
        "floor_reference": str(params["floor_reference"]),
        "init": str(params["init"]),
        "ratio_reference": str(params["ratio_reference"]),
        "threshold": shrinker.threshold(admitted),
        "adjustments": refined.moves,
        "cost": cost,
        "cost_target": target,
        "relative_error": (cost - target) / target,
        "widened": widened.as_dict(),
        "floors": dict(zip(space.names, (int(v) for v in lowest), strict=True)),
        "classifier_inputs": sorted(classifier_inputs),
        "kept": kept,
        "ratios": widths.ratio_to_base(),
    }
    search_flops = TRAIN_FLOPS_PER_MAC_PER_IMAGE * widened_macs * batch * int(params["batches"])
    return SearchResult(
        widths,
        search_flops=search_flops,
        match_target=False,
        info=info,
        weights=weights,
        init_from_weights=weights is not None,
    )


def check(params: Mapping[str, Any]) -> None:
    """Every hyperparameter is in range; errors name the field and what is allowed."""
    merged = {**DEFAULTS, **params}
    if not real("beta", merged["beta"]) > 0:
        raise ValueError(
            f"method.beta: {merged['beta']!r} is not allowed; choose a number > 0 (usually >= 1)"
        )
    for name in ("rho", "tau"):
        if not 0 <= real(name, merged[name]) <= 1:
            raise ValueError(f"method.{name}: {merged[name]!r} is not allowed; choose a number in [0, 1]")
    if not 0 < real("tolerance", merged["tolerance"]) < 1:
        raise ValueError(
            f"method.tolerance: {merged['tolerance']!r} is not allowed; choose a number in (0, 1)"
        )
    for name in ("m", "batches"):
        value = merged[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"method.{name}: {value!r} is not allowed; choose an integer >= 1")
    for name, allowed in (
        ("floor_reference", FLOOR_REFERENCES),
        ("init", INITS),
        ("ratio_reference", RATIO_REFERENCES),
    ):
        if merged[name] not in allowed:
            raise ValueError(
                f"method.{name}: {merged[name]!r} is not allowed; choose one of: {', '.join(allowed)}"
            )


METHOD = register(
    Method(
        name="lwdna",
        search=search,
        defaults=DEFAULTS,
        summary="LW-DNA: widen by beta, score channels by hypernetwork-latent gradients, shrink to the target",
        check=check,
        prunes=True,
        widest=lambda params: float(params.get("beta", DEFAULTS["beta"])),
    )
)
