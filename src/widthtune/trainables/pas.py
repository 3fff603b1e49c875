"""`pas`: Pruning-as-Search (Li et al.) -- learn per-channel binary masks on a trained model under a MACs penalty.

A depth-wise binary convolution (DBC) -- one learnable value v per channel, initialised at `init` (0.6) --
multiplies every prunable channel group's outputs at its mask sites (`models.mask_sites`: after the norms
that write the group, or after a RepVGG block's ReLU; a residual stream's writers share one mask). The
forward uses b = 1[v > threshold] (0.5), a group keeping at least its minimum channels (those of highest v:
an emptied stream would cut the network); the backward passes dL/db to v unchanged (straight-through).

- Loss: the task loss + beta x ((cost(b) - C) / cost_unit)^2, where cost(b) is the arithmetic cost model
  (`CostModel.cost_tensor`, the task's convention, MACs by default) evaluated at each group's mask sum, so
  the penalty's gradient reaches every v through the STE; C is the task's cost target; cost_unit 1e9 puts it
  in GMACs as the paper does (tiny models want a smaller unit, e.g. 1e6, or the penalty vanishes). beta
  defaults to 5 (ResNet, MobileNetV2) and to 0.1 for a structurally reparameterised family (one whose
  deployed form differs from its trained form: RepVGG), the paper's settings.
- Protocol: start from the trained base model (the shared `baseline` artifact, trained once per experiment
  and seed on the trial's recipe, or for `pretrain_epochs`; trained in the trial when called without the
  platform), train weights and masks together for `search_epochs` at the recipe's learning rate held
  constant (the paper rewinds the rate and anneals it only once the masks freeze), then freeze the masks:
  the found widths are the mask sums, each group keeping its channels with b = 1 (at least its minimum,
  rounded to its divisor by v). When those widths miss the target by more than 1%, the shared refinement
  (`models.match.refine_widths`) nudges whole divisor steps onto it, the channels added or dropped ranked
  by v. The result carries the kept indices and the searched weights cut to them, for `retrain.mode:
  finetune`; Scratch-E/B retrain the found widths from scratch like every other method.

Streams routed by a zero-pad (option A) shortcut are not masked (see models.inherit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from widthtune.models.cost import CostModel
from widthtune.models.inherit import pad_linked_groups, top_channels
from widthtune.models.mask_sites import mask_sites
from widthtune.models.match import MovePriority, refine_widths
from widthtune.models.registry import family_of, materialize
from widthtune.models.space import ChannelSpace
from widthtune.models.spec import ModelSpec, parse_spec
from widthtune.models.widths import Widths, round_width, smallest_width
from widthtune.trainables.artifacts import ArtifactContext, ArtifactRecipe, trained_model
from widthtune.trainables.hyperparameters import is_integer, is_real
from widthtune.trainables.method import Method
from widthtune.trainables.registry import register
from widthtune.trainables.retraining import rescale_recipe
from widthtune.trainables.task import SearchResult, Task, pruned_result
from widthtune.training.loop import EpochRecord, train

DEFAULTS: dict[str, Any] = {
    "beta": None,  # None: 5 (ResNet, MobileNetV2), 0.1 for a reparameterised family (RepVGG), as in the paper
    "search_epochs": 10,  # the paper searches 10 ImageNet epochs, then fine-tunes 50 with the masks frozen
    "pretrain_epochs": None,  # None: the baseline trains on the trial's recipe; 0: search from random weights
    "init": 0.6,
    "threshold": 0.5,
    "cost_unit": 1e9,  # the penalty's unit: 1e9 = GMACs (the paper's)
}
BASELINE = "baseline"  # the name of the shared trained-model artifact in Task.artifacts
# the mask sums are the widths when they land this close to the target; else the shared refinement nudges them
MASK_TOLERANCE = 0.01
REPARAMETERISED_BETA = 0.1
DEFAULT_BETA = 5.0


def kept_bits(values: Tensor, threshold: float, minimum: int = 0) -> Tensor:
    """1[v > threshold], raised to the `minimum` channels of highest v when fewer pass (a group never empties).

    The top `minimum` are always set: when that many pass they are among them, so no count (no host sync)."""
    return (values > threshold).index_fill(0, torch.topk(values.detach(), minimum).indices, True)


def binarize(values: Tensor, threshold: float, minimum: int = 0) -> Tensor:
    """b = kept_bits(v) forward; the gradient passes to v unchanged (the straight-through estimator)."""
    hard = kept_bits(values.detach(), threshold, minimum).to(values.dtype)
    return values + (hard - values).detach()


class MaskedNetwork(nn.Module):
    """A network with one DBC mask per masked group, multiplying that group's channels at each of its sites."""

    def __init__(
        self,
        net: nn.Module,
        space: ChannelSpace,
        sites: Mapping[str, tuple[str, ...]],
        init: float,
        threshold: float,
    ) -> None:
        super().__init__()
        self.net = net
        self.space = space
        self.threshold = threshold
        self.names = tuple(name for name in space.names if name in sites)
        # an emptied group would cut the network (an emptied stream feeds the next norm zeros, whose gradient
        # explodes): the search keeps each group's minimum, as the frozen widths do
        self.minimums = tuple(
            min(space[name].base, max(1, smallest_width(space[name]))) for name in self.names
        )
        self.values = nn.ParameterList(
            [nn.Parameter(torch.full((space[name].base,), float(init))) for name in self.names]
        )
        modules = dict(net.named_modules())
        self._handles = [
            modules[path].register_forward_hook(partial(self._mask, index))
            for index, name in enumerate(self.names)
            for path in sites[name]
        ]

    def _mask(self, index: int, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        bits = binarize(self.values[index], self.threshold, self.minimums[index]).to(output.dtype)
        return output * bits.reshape(1, -1, *([1] * (output.dim() - 2)))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def bits(self) -> dict[str, Tensor]:
        """Each masked group's binary mask (detached)."""
        return {
            name: kept_bits(v.detach(), self.threshold, minimum)
            for name, v, minimum in zip(self.names, self.values, self.minimums, strict=True)
        }

    def scores(self) -> dict[str, Tensor]:
        """Each masked group's mask values v (detached, on the CPU): the order channels are kept in."""
        return {name: v.detach().float().cpu() for name, v in zip(self.names, self.values, strict=True)}

    def widths(self) -> Tensor:
        """Every group's width as a differentiable tensor: a masked group's mask sum, else its base width."""
        sums = {
            name: binarize(v, self.threshold, minimum).sum()
            for name, v, minimum in zip(self.names, self.values, self.minimums, strict=True)
        }
        device = self.values[0].device if self.names else torch.device("cpu")
        return torch.stack([sums.get(g.name, torch.tensor(float(g.base), device=device)) for g in self.space])

    def remove(self) -> nn.Module:
        """Take the masks off: the plain network, its weights as searched."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.net


def cost_penalty(
    cost_model: CostModel, target: float, beta: float, unit: float, convention: str = "macs"
) -> Callable[[nn.Module], Tensor]:
    """beta x ((cost at the mask sums - target) / unit)^2: zero at the target, its gradient toward it."""

    def penalty(model: nn.Module) -> Tensor:
        cost = cost_model.cost_tensor(model.widths().double(), convention)
        return (beta * ((cost - target) / unit) ** 2).float()

    return penalty


def frozen_widths(
    scores: Mapping[str, Tensor],
    bits: Mapping[str, Tensor],
    cost_model: CostModel,
    target: float,
    convention: str = "macs",
    tolerance: float = MASK_TOLERANCE,
    refined_tolerance: float | None = None,
) -> tuple[Widths, dict[str, tuple[int, ...]], Widths]:
    """(widths, kept channels, the raw mask widths): each masked group keeps its b = 1 channels (at least its
    minimum, on its divisor, by v); widths missing the target by more than `tolerance` are nudged in whole
    divisor steps (to within `refined_tolerance`, default `tolerance`), channels added or dropped by v."""
    space = cost_model.space
    values = np.asarray(
        [min(g.base, round_width(int(bits[g.name].sum()), g)) if g.name in bits else g.base for g in space],
        dtype=np.int64,
    )
    raw = Widths(space, tuple(int(v) for v in values))
    if abs(float(cost_model.cost(values, convention)) - target) > tolerance * target:
        lower = [smallest_width(g) if g.name in bits else g.base for g in space]
        upper = [g.base for g in space]
        values = refine_widths(
            values,
            target,
            cost_model,
            convention,
            tolerance=tolerance if refined_tolerance is None else refined_tolerance,
            lower=np.asarray(lower),
            upper=np.asarray(upper),
            pairs=False,
            priority=by_mask_value(space, scores),
        ).values
    widths = Widths(space, tuple(int(v) for v in values))
    kept = {
        g.name: top_channels(scores[g.name], widths[g.name]) if g.name in scores else tuple(range(g.base))
        for g in space
    }
    return widths, kept, raw


def by_mask_value(space: ChannelSpace, scores: Mapping[str, Tensor]) -> MovePriority:
    """A step up ranks by the v of the channels it adds, a step down by minus the v of those it drops, so the
    nudge moves the channels the masks were least sure of (as if the threshold moved)."""
    ranked = {space.index(name): torch.sort(s, descending=True).values.numpy() for name, s in scores.items()}

    def priority(values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        ranks = np.full(len(candidates), -np.inf)
        for row, candidate in enumerate(candidates):
            (group,) = np.flatnonzero(candidate != values)
            if group not in ranked:
                continue
            low, high = sorted((int(values[group]), int(candidate[group])))
            moved = float(ranked[group][low:high].mean())
            ranks[row] = moved if candidate[group] > values[group] else -moved
        return ranks

    return priority


def default_beta(spec: ModelSpec | str) -> float:
    """The paper's beta: 0.1 for a structurally reparameterised family (RepVGG), else 5 (ResNet, MobileNetV2)."""
    return REPARAMETERISED_BETA if family_of(parse_spec(spec)).deploy is not None else DEFAULT_BETA


def resolve_params(task: Task) -> dict[str, Any]:
    """DEFAULTS, the trial's values, and the family's beta filled in."""
    check(task.params)
    params = {**DEFAULTS, **task.params}
    if params["beta"] is None:
        params["beta"] = default_beta(task.model)
    return params


def baseline(task: Task, pretrain_epochs: int | None) -> tuple[nn.Module, int]:
    """The trained base model (the shared artifact, or trained here when there is none) and the images it took."""
    net = materialize(task.model, seed=task.seed)
    path = task.artifacts.get(BASELINE)
    if path is not None:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net, 0
    if pretrain_epochs == 0:
        return net, 0
    epochs = task.train.epochs if pretrain_epochs is None else int(pretrain_epochs)
    history = train(net, task.data, rescale_recipe(task.train, epochs))
    return net, history.final.images_seen


def search(task: Task) -> SearchResult:
    """Train masks and weights under the cost penalty from the trained model, freeze the masks, keep the weights."""
    params = resolve_params(task)
    if task.cost_target is None:
        raise ValueError(
            "cost_target: pas searches toward a cost target; set cost_target (e.g. {ratio: 0.5})"
        )
    space, target = task.space, float(task.cost_target)
    net, pretrain_images = baseline(task, params["pretrain_epochs"])
    sites = mask_sites(net, space, exclude=pad_linked_groups(net, space))
    masked = MaskedNetwork(net, space, sites, float(params["init"]), float(params["threshold"]))
    penalty = cost_penalty(
        task.cost_model, target, float(params["beta"]), float(params["cost_unit"]), task.convention
    )
    costs: list[float] = []

    def record(_: EpochRecord) -> None:
        costs.append(float(task.cost_model.cost_tensor(masked.widths().detach().double(), task.convention)))

    recipe = replace(rescale_recipe(task.train, int(params["search_epochs"])), schedule="constant")
    history = train(
        masked, task.data, recipe, regularizer=penalty, on_epoch=record, no_decay=list(masked.values)
    )
    masked.to("cpu").eval()
    scores, bits = masked.scores(), masked.bits()
    net = masked.remove()
    widths, kept, raw = frozen_widths(
        scores, bits, task.cost_model, target, task.convention, refined_tolerance=task.tolerance
    )
    cost = float(task.cost_model.cost(widths, task.convention))
    raw_cost = float(task.cost_model.cost(raw, task.convention))
    images = history.final.images_seen + pretrain_images
    info = {
        "beta": float(params["beta"]),
        "search_epochs": int(params["search_epochs"]),
        "pretrain_epochs": params["pretrain_epochs"],
        "baseline": task.artifacts.get(BASELINE),
        "init": float(params["init"]),
        "threshold": float(params["threshold"]),
        "cost_unit": float(params["cost_unit"]),
        "masked_groups": list(masked.names),
        "mask_widths": raw.as_dict(),
        "mask_cost": raw_cost,
        "mask_cost_error": (raw_cost - target) / target,
        "nudged": raw != widths,
        "cost": cost,
        "convention": task.convention,
        "cost_target": target,
        "cost_error": (cost - target) / target,
        "search_cost_by_epoch": costs,
        "search_images": history.final.images_seen,
        "pretrain_images": pretrain_images,
    }
    return pruned_result(task, widths, net, space, kept, images, info)


def artifacts(params: Mapping[str, Any], context: ArtifactContext) -> Mapping[str, ArtifactRecipe]:
    """The trained baseline the search starts from, trained once per experiment and seed (none for 0 epochs)."""
    epochs = {**DEFAULTS, **params}["pretrain_epochs"]
    if epochs == 0:
        return {}
    return {BASELINE: trained_model(context, train=None if epochs is None else {"epochs": int(epochs)})}


def check(params: Mapping[str, Any]) -> None:
    """Every hyperparameter is a plain value in its allowed range; the message names the field."""
    merged = {**DEFAULTS, **params}
    beta, init, threshold, unit = merged["beta"], merged["init"], merged["threshold"], merged["cost_unit"]
    if beta is not None and not (is_real(beta) and beta > 0):
        raise ValueError(
            f"method.beta: {beta!r} is not allowed; choose a number > 0 (or null for the default)"
        )
    if not is_integer(merged["search_epochs"], 1):
        raise ValueError(
            f"method.search_epochs: {merged['search_epochs']!r} is not allowed; choose an integer >= 1"
        )
    epochs = merged["pretrain_epochs"]
    if epochs is not None and not is_integer(epochs, 0):
        raise ValueError(
            f"method.pretrain_epochs: {epochs!r} is not allowed; choose an integer >= 0 (or null: the recipe's)"
        )
    if not is_real(threshold):
        raise ValueError(f"method.threshold: {threshold!r} is not allowed; choose a number")
    if not (is_real(init) and init > threshold):
        raise ValueError(
            f"method.init: {init!r} is not allowed; choose a number above method.threshold ({threshold!r}), "
            "so the masks start keeping every channel"
        )
    if not (is_real(unit) and unit > 0):
        raise ValueError(f"method.cost_unit: {unit!r} is not allowed; choose a number > 0 (1e9: GMACs)")


METHOD = register(
    Method(
        name="pas",
        search=search,
        defaults=DEFAULTS,
        summary="Pruning-as-Search: STE binary channel masks on a trained model under a (cost - target)^2 penalty",
        check=check,
        keeps_weights=True,
        prunes=True,
        artifacts=artifacts,
        widest=lambda params: 1.0,
    )
)
