"""The weight-sharing supernet: one set of weights at the largest widths, run as any of its sub-networks.

A `Supernet` holds the model of a spec at `max_widths` (e.g. 1.5x the base) and nothing else trainable. A
sub-network is chosen by a width vector -- each group keeps its first c channels (AutoSlim's fixed
pattern) -- or by explicit channel index sets per group (CafeNet's locally free pattern). A channel group is
the coupling unit of a `ChannelSpace`, so a residual stream, a depthwise conv and its expand conv, a linear
reading flattened channels all take the group's one index set. The slicing plan is
`inherit.channel_slices`, the one pruning inherits weights by.

Forward at a sub-network: the model at that width vector, run by `torch.func.functional_call` on tensors
sliced from the supernet's -- `narrow` views where a group keeps a prefix, `index_select` otherwise -- so
gradients flow back into the shared weights at exactly the kept channels. The model is one frame: the
supernet's model on the meta device, re-sized per width vector by setting its few width attributes (a
depthwise conv's groups, a zero-pad shortcut's width, the sizes layers record), so choosing a new width
vector builds nothing. The frame is checked once against `materialize` at a probe width vector; a model it
does not fit (a module keeping a width of its own) gets `materialize(spec, widths)` per width vector
instead, kept in a small LRU cache. Either way the sub-network *is* `materialize(spec, widths)`: `extract`
hands its state dict over unchanged, which is why extracted models reproduce the supernet's logits exactly.
For option-A (zero-pad) CIFAR ResNets this means the smaller model pads its narrower streams re-centred, as
a model built at those widths does; the sub-network is then not the supernet with channels masked (see the
limit documented in `inherit`), only a network sharing its weights.

BN statistics: a forward in train mode uses batch statistics and never changes the running statistics
(each call sees copies); only `recalibrate` does, as AutoSlim does per sub-network: reset the sub-network's
statistics, forward N batches (default 5) with the norms in train mode and cumulative averaging (momentum
None; every other module in eval mode, so dropout is off), then write them into the shared buffers at the
sub-network's channels. An eval-mode forward, `bind` and `extract` at that sub-network then use them; a
later recalibration of another sub-network overwrites the channels they share, so evaluate right after.

Cost: a step through the supernet runs the same convolutions as the plain model plus the slicing and
`functional_call`'s swapping of every tensor, a fixed few milliseconds of Python per forward; moving to a
new width vector adds the cuts and the frame's re-sizing, about a millisecond. `benchmarks/supernet.py` prints both against a plain model.
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from widthtune.models.channel_selection import ChannelSelection
from widthtune.models.inherit import channel_slices, complete_kept, expand_index, pad_shortcuts
from widthtune.models.registry import canonical_spec, channel_space, materialize
from widthtune.models.space import ChannelSpace
from widthtune.models.spec import ModelSpec
from widthtune.models.surgery import is_depthwise
from widthtune.models.widths import Widths, round_width, smallest_width

BATCH_NORMS = nn.modules.batchnorm._BatchNorm
DEFAULT_CALIBRATION_BATCHES = 5
DEFAULT_CACHE_SIZE = 32


class SupernetError(ValueError):
    """A supernet argument is out of range; the message names it and what is allowed."""


@dataclass(frozen=True, eq=False)
class Cut:
    """Keep entries 0..prefix-1 along `dim` (a view), or the entries `index` names (a copy)."""

    dim: int
    prefix: int | None = None
    index: Tensor | None = None


@dataclass(frozen=True, eq=False)
class Subnet:
    """One sub-network of a supernet: its widths, the supernet channels each group keeps, and the cuts."""

    widths: Widths  # over the spec's channel space: what materialize and the cost model take
    kept: Mapping[str, tuple[int, ...]]  # every group's kept supernet channels, sorted
    cuts: Mapping[str, tuple[Cut, ...]]  # state-dict key -> the cuts to apply, by dim
    max_values: tuple[int, ...]  # the widths of the supernet it was cut from

    @property
    def fixed(self) -> bool:
        """Every group keeps its first channels (AutoSlim's pattern)."""
        return all(kept == tuple(range(len(kept))) for kept in self.kept.values())

    @property
    def key(self) -> tuple[tuple[int, ...], ...]:
        """Hashable identity of the channel choice, for caches."""
        return tuple(self.kept[name] for name in self.widths.space.names)


SubnetChoice = Subnet | Widths | Mapping[str, int] | Mapping[str, Sequence[int]] | None


def _take(tensor: Tensor, cuts: tuple[Cut, ...]) -> Tensor:
    """The kept slice of a tensor: views for prefixes, index_select (differentiable) otherwise."""
    for cut in cuts:
        if cut.index is None:
            if cut.prefix != tensor.shape[cut.dim]:
                tensor = tensor.narrow(cut.dim, 0, cut.prefix)
        else:
            index = cut.index if cut.index.device == tensor.device else cut.index.to(tensor.device)
            tensor = tensor.index_select(cut.dim, index)
    return tensor


def _is_index_set(value: object) -> bool:
    return isinstance(value, Sequence | Tensor | np.ndarray | range) and not isinstance(value, str)


def _check_bounds(low: Widths, high: Widths) -> None:
    if low.space != high.space:
        raise SupernetError("width bounds: low and high are widths of different channel spaces")
    for name in low.space.names:
        if low[name] > high[name]:
            raise SupernetError(
                f"width bounds: group {name!r} has minimum {low[name]} above maximum {high[name]}"
            )


def random_widths(low: Widths, high: Widths, rng: np.random.Generator) -> Widths:
    """Per group, a width drawn uniformly from its legal widths (multiples of its divisor) in [low, high]."""
    _check_bounds(low, high)
    if not isinstance(rng, np.random.Generator):
        raise SupernetError(
            f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    divisors = np.array([group.divisor for group in low.space], dtype=np.int64)
    steps = rng.integers(np.array(low.values) // divisors, np.array(high.values) // divisors + 1)
    return Widths(low.space, tuple(int(v) for v in steps * divisors))


def sandwich(low: Widths, high: Widths, n: int, rng: np.random.Generator) -> list[Widths]:
    """The sandwich rule's width vectors for one step: the largest, the smallest, then `n` random ones."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SupernetError(f"sandwich: n={n!r} random widths per step must be an integer >= 0")
    _check_bounds(low, high)
    return [high, low, *(random_widths(low, high, rng) for _ in range(n))]


class _Frame:
    """The model at the largest widths on the meta device, re-sized in place by its width attributes alone.

    A sub-network's forward reads its sizes from the tensors functional_call hands it, except for a few
    attributes: a depthwise conv's `groups`, a LayerNorm's `normalized_shape`, a zero-pad shortcut's
    `out_channels` (and the cosmetic `in_channels`, `num_features`, ...). Setting those per width vector
    turns one frame into every sub-network without building a model. `fits` checks, once, that the frame set
    to a probe width vector has every plain attribute of `materialize(spec, probe)`; where it does not (a
    user module keeping a width of its own), the supernet builds one skeleton per width vector instead.
    """

    def __init__(self, model: nn.Module, space: ChannelSpace) -> None:
        self.model = model
        modules = dict(model.named_modules())
        # (path, attribute) -> (parts, factor, tuple): the attribute is factor x the parts' widths summed,
        # a part being a group index or (as a negative number) a fixed channel count
        slots: dict[tuple[str, str], tuple[tuple[int, ...], int, bool]] = {}

        def assign(
            path: str, attribute: str, parts: tuple[int, ...], factor: int = 1, as_tuple: bool = False
        ) -> None:
            previous = slots.setdefault((path, attribute), (parts, factor, as_tuple))
            if previous != (parts, factor, as_tuple):
                raise _FrameUnsupported(f"{path}.{attribute} follows two channel groups")

        for (path, kind), layout in space.layouts().items():
            if kind == "param":
                continue
            parts = tuple(index if index is not None else -count for index, count in layout)
            base = sum(count for _, count in layout)
            module = modules.get(path)
            if isinstance(module, nn.Conv2d):
                if is_depthwise(module):
                    for attribute in ("groups", "in_channels", "out_channels"):
                        assign(path, attribute, parts)
                else:
                    assign(path, "out_channels" if kind == "out" else "in_channels", parts)
            elif isinstance(module, nn.Linear):
                if kind == "out":
                    assign(path, "out_features", parts)
                else:
                    assign(path, "in_features", parts, module.in_features // base)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                assign(path, "num_features", parts)
            elif isinstance(module, nn.GroupNorm):
                assign(path, "num_channels", parts)
            elif isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
                assign(path, "normalized_shape", parts, as_tuple=True)
            else:
                raise _FrameUnsupported(f"{path}: {type(module).__name__}")
        for path, _, sink in pad_shortcuts(model, space):
            assign(path, "out_channels", (space.index(sink.name),))
        self.slots = tuple((modules[path], attribute, *rule) for (path, attribute), rule in slots.items())
        self.current: tuple[int, ...] | None = None

    def at(self, widths: Widths) -> nn.Module:
        """The frame with every width attribute set for `widths`."""
        if widths.values != self.current:
            for module, attribute, parts, factor, as_tuple in self.slots:
                value = sum(widths.values[p] if p >= 0 else -p for p in parts) * factor
                setattr(module, attribute, (value,) if as_tuple else value)
            self.current = widths.values
        return self.model

    def fits(self, reference: nn.Module, widths: Widths) -> bool:
        """Whether the frame at `widths` has the structure and plain attributes of `reference` (built there)."""
        frame = dict(self.at(widths).named_modules())
        built = dict(reference.named_modules())
        if frame.keys() != built.keys():
            return False
        for path, module in built.items():
            if type(frame[path]) is not type(module) or _plain(frame[path]) != _plain(module):
                return False
        return True


class _FrameUnsupported(Exception):
    """A member module whose width attributes the frame does not know (internal: triggers skeletons)."""


def _plain(module: nn.Module) -> dict[str, object]:
    """A module's public plain-valued attributes (sizes, strides, flags), the ones a width could set."""
    return {
        key: value
        for key, value in vars(module).items()
        if not key.startswith("_")
        and key != "training"
        and isinstance(value, int | float | str | tuple | None)
    }


def probe_widths(low: Widths, high: Widths) -> Widths:
    """A width vector below `high` in every group that has room (about half), to check a frame against."""
    values = []
    for group, lo, hi in zip(high.space, low.values, high.values, strict=True):
        width = min(max(round_width(hi / 2, group), lo), hi)
        if width == hi and hi - group.divisor >= lo:
            width = hi - group.divisor
        values.append(width)
    return Widths(high.space, tuple(values))


class Supernet(nn.Module):
    """One model at `max_widths` whose weights every sub-network shares; `forward(x, subnet)` runs one."""

    def __init__(
        self,
        spec: ModelSpec | str,
        max_widths: Widths | Mapping[str, int] | None = None,
        *,
        min_widths: Widths | Mapping[str, int] | None = None,
        seed: int | None = None,
        calibration_batches: int = DEFAULT_CALIBRATION_BATCHES,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        super().__init__()
        for name, value in (("calibration_batches", calibration_batches), ("cache_size", cache_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SupernetError(f"supernet: {name}={value!r} must be a positive integer")
        self.spec = canonical_spec(spec)
        self.space: ChannelSpace = channel_space(self.spec)
        self.max_widths = Widths.coerce(self.space, max_widths)
        self.min_widths = (
            Widths(self.space, tuple(smallest_width(group) for group in self.space))
            if min_widths is None
            else Widths.coerce(self.space, min_widths)
        )
        _check_bounds(self.min_widths, self.max_widths)
        self.calibration_batches = calibration_batches
        self.cache_size = cache_size
        # the same groups with the supernet's widths as their base: what its channel indices range over
        self.shared_space = self.space.rebased(self.max_widths)
        self.model = materialize(self.spec, self.max_widths, seed=seed)
        selections = [path for path, m in self.model.named_modules() if isinstance(m, ChannelSelection)]
        if selections:
            raise SupernetError(
                f"{self.spec}: {selections[0]!r} is a channel selection, which picks channels of another group "
                "by index, so no sub-network is a slice of the supernet; build the model without selections "
                "(preresnet_cifar: select=false)"
            )
        self._slices = {
            key: tuple(sorted(dims.items()))
            for key, dims in channel_slices(self.model, self.shared_space).items()
        }
        self._skeletons: OrderedDict[tuple[int, ...], nn.Module] = OrderedDict()
        self._frame = self._make_frame()

    def _make_frame(self) -> _Frame | None:
        """One re-sizable skeleton for every width vector, if it matches what materialize builds at a probe."""
        probe = probe_widths(self.min_widths, self.max_widths)
        reference = materialize(self.spec, probe)
        shapes = {key: tuple(t.shape) for key, t in reference.state_dict().items()}
        sliced = {key: tuple(t.shape) for key, t in self.extract(probe).items()}
        if sliced != shapes:  # the slicing itself is wrong: no skeleton would load what extract gives
            wrong = next(key for key in {**shapes, **sliced} if sliced.get(key) != shapes.get(key))
            raise SupernetError(
                f"{self.spec}: cannot slice {wrong}: {sliced.get(wrong)} cut from the supernet, "
                f"{shapes.get(wrong)} in the model at {dict(probe)}"
            )
        try:
            frame = _Frame(copy.deepcopy(self.model).to("meta"), self.shared_space)
        except _FrameUnsupported:
            return None
        return frame if frame.fits(reference, probe) else None

    @property
    def reuses_one_skeleton(self) -> bool:
        """True when every sub-network runs on one re-sized frame; False: one built model per width vector."""
        return self._frame is not None

    # -- choosing sub-networks -------------------------------------------------------------------------

    def subnet(self, choice: SubnetChoice = None) -> Subnet:
        """A sub-network: None (the largest), a width vector (first channels) or index sets per group."""
        if isinstance(choice, Subnet):
            if choice.widths.space != self.space or choice.max_values != self.max_widths.values:
                raise SupernetError("subnet: it was cut from a supernet of another model or other widths")
            return choice
        if choice is None:
            choice = self.max_widths
        if isinstance(choice, Widths) or not any(_is_index_set(v) for v in dict(choice).values()):
            widths = Widths.coerce(self.space, choice)
            for name in self.space.names:
                if widths[name] > self.max_widths[name]:
                    raise SupernetError(
                        f"widths: group {name!r} asks for {widths[name]} channels; "
                        f"the supernet holds {self.max_widths[name]}"
                    )
            kept = {name: tuple(range(widths[name])) for name in self.space.names}
        else:
            counts = [name for name, v in dict(choice).items() if not _is_index_set(v)]
            if counts:
                raise SupernetError(
                    f"subnet: give widths or channel index sets, not both (group {counts[0]!r} has a count)"
                )
            raw = {
                k: v.tolist() if isinstance(v, Tensor | np.ndarray) else list(v)
                for k, v in dict(choice).items()
            }
            kept = complete_kept(self.shared_space, raw)
            widths = Widths.from_mapping(self.space, {name: len(kept[name]) for name in self.space.names})
        return self._cut(widths, kept)

    def _cut(self, widths: Widths, kept: dict[str, tuple[int, ...]]) -> Subnet:
        """The cuts of every sliced entry: prefixes where a group keeps its first channels, else indices."""
        device = self._device()
        indices = {
            name: None if channels == tuple(range(len(channels))) else torch.tensor(channels, device=device)
            for name, channels in kept.items()
        }
        cuts = {}
        for key, dims in self._slices.items():
            entries = []
            for dim, where in dims:
                if where.group is None:  # a concatenation: each group's channels at its offset
                    entries.append(Cut(dim, index=where.index(kept, device)))
                    continue
                index = indices[where.group]
                if index is None:
                    entries.append(Cut(dim, prefix=widths[where.group] * where.factor))
                else:
                    entries.append(Cut(dim, index=expand_index(index, where.factor)))
            cuts[key] = tuple(entries)
        return Subnet(widths, kept, cuts, self.max_widths.values)

    def _device(self) -> torch.device:
        return next(itertools.chain(self.model.parameters(), self.model.buffers())).device

    @property
    def largest(self) -> Widths:
        """The widest sub-network: the supernet itself."""
        return self.max_widths

    @property
    def smallest(self) -> Widths:
        """The narrowest sub-network the supernet samples."""
        return self.min_widths

    def sample(self, rng: np.random.Generator) -> Widths:
        """A random width vector between the smallest and the largest, per group (see `random_widths`)."""
        return random_widths(self.min_widths, self.max_widths, rng)

    def sandwich(self, n: int, rng: np.random.Generator) -> list[Widths]:
        """Largest, smallest and `n` random width vectors (the sandwich rule)."""
        return sandwich(self.min_widths, self.max_widths, n, rng)

    # -- running sub-networks --------------------------------------------------------------------------

    def _skeleton(self, widths: Widths) -> nn.Module:
        """The model at `widths` without tensors of its own (meta device): the frame, or a cached build."""
        if self._frame is not None:
            return self._frame.at(widths)
        skeleton = self._skeletons.get(widths.values)
        if skeleton is not None:
            self._skeletons.move_to_end(widths.values)
            return skeleton
        skeleton = materialize(self.spec, widths).to("meta")
        self._skeletons[widths.values] = skeleton
        if len(self._skeletons) > self.cache_size:
            self._skeletons.popitem(last=False)
        return skeleton

    def _tensors(self, subnet: Subnet) -> dict[str, Tensor]:
        """The sub-network's parameters (sliced, differentiable) and buffers (copies in train mode)."""
        tensors = {name: _take(p, subnet.cuts.get(name, ())) for name, p in self.model.named_parameters()}
        for name, buffer in self.model.named_buffers():
            value = _take(buffer, subnet.cuts.get(name, ()))
            tensors[name] = value.clone() if self.training else value
        return tensors

    def forward(self, x: Tensor, subnet: SubnetChoice = None) -> Tensor:
        """Logits of the sub-network (the largest when None); gradients reach the shared weights."""
        subnet = self.subnet(subnet)
        skeleton = self._skeleton(subnet.widths)
        if skeleton.training != self.training:  # every mode change goes through the root, so one flag tells
            skeleton.train(self.training)
        return functional_call(skeleton, self._tensors(subnet), (x,), strict=True)

    def bind(self, subnet: SubnetChoice = None) -> SubnetModule:
        """The sub-network as an ordinary module (for `training.evaluate` or `train`); weights stay shared."""
        return SubnetModule(self, self.subnet(subnet))

    @torch.no_grad()
    def recalibrate(
        self,
        subnet: SubnetChoice,
        batches: Iterable[Tensor | Sequence[Tensor]],
        count: int | None = None,
    ) -> dict[str, Tensor]:
        """Re-estimate the sub-network's BN statistics from `count` batches (AutoSlim); returns them.

        `batches` yields images or (images, labels) pairs, e.g. a training `DeviceLoader`; the first
        `count` (default: the supernet's `calibration_batches`) are used, and fewer is an error.
        """
        count = self.calibration_batches if count is None else count
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SupernetError(f"recalibrate: count={count!r} batches must be a positive integer")
        subnet = self.subnet(subnet)
        skeleton = self._skeleton(subnet.widths)
        tensors = self._tensors(subnet)
        norms = {
            path: module
            for path, module in skeleton.named_modules()
            if isinstance(module, BATCH_NORMS) and module.track_running_stats
        }
        fresh: dict[str, Tensor] = {}
        for path in norms:
            prefix = f"{path}." if path else ""
            fresh[f"{prefix}running_mean"] = torch.zeros_like(tensors[f"{prefix}running_mean"])
            fresh[f"{prefix}running_var"] = torch.ones_like(tensors[f"{prefix}running_var"])
            fresh[f"{prefix}num_batches_tracked"] = torch.zeros_like(tensors[f"{prefix}num_batches_tracked"])
        tensors.update(fresh)
        momenta = {path: norm.momentum for path, norm in norms.items()}
        device, seen = self._device(), 0
        try:
            skeleton.eval()
            for norm in norms.values():
                norm.train()
                norm.momentum = None  # cumulative average over the batches
            for batch in itertools.islice(batches, count):
                images = batch if isinstance(batch, Tensor) else batch[0]
                functional_call(skeleton, tensors, (images.to(device),), strict=True)
                seen += 1
        finally:
            for path, norm in norms.items():
                norm.momentum = momenta[path]
            skeleton.train(self.training)
        if seen < count:
            raise SupernetError(f"recalibrate: needs {count} batches, the data gave only {seen}")
        for key, value in fresh.items():
            self._store(key, value, subnet.cuts.get(key, ()))
        return {key: value.clone() for key, value in fresh.items()}

    def _store(self, key: str, value: Tensor, cuts: tuple[Cut, ...]) -> None:
        """Write a sub-network's buffer back into the shared one at its channels."""
        target = self.model.get_buffer(key)
        if not cuts:
            target.copy_(value)
            return
        if len(cuts) > 1:
            raise SupernetError(f"{key}: a buffer sliced along {len(cuts)} dims cannot be written back")
        cut = cuts[0]
        if cut.index is None:
            target.narrow(cut.dim, 0, cut.prefix).copy_(value)
        else:
            target.index_copy_(cut.dim, cut.index.to(target.device), value)

    @torch.no_grad()
    def extract(self, subnet: SubnetChoice = None) -> dict[str, Tensor]:
        """The sub-network's state dict (CPU copies): loads strictly into `materialize(spec, widths)`."""
        subnet = self.subnet(subnet)
        return {
            key: _take(tensor.detach(), subnet.cuts.get(key, ()))
            .to("cpu")
            .clone(memory_format=torch.contiguous_format)
            for key, tensor in self.model.state_dict().items()
        }


class SubnetModule(nn.Module):
    """One sub-network as a module: its parameters are the supernet's, so training it trains them."""

    def __init__(self, supernet: Supernet, subnet: Subnet) -> None:
        super().__init__()
        self.supernet = supernet
        self.subnet = subnet

    @property
    def widths(self) -> Widths:
        """The sub-network's width vector."""
        return self.subnet.widths

    def forward(self, x: Tensor) -> Tensor:
        """The supernet's forward at this sub-network."""
        return self.supernet(x, self.subnet)
