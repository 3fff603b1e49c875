"""Weight inheritance: slice a trained base model down to kept channels, so pruning can fine-tune from it.

Kept indices name, per channel group, the base-model channels that survive (sorted; a group left out keeps
every channel). `inherit_weights` cuts every member of every group -- conv outputs and inputs, depthwise
convs, norm affines and running statistics, linear inputs (also a linear reading k values per channel after
a flatten), raw parameters -- into the state dict of `materialize(spec, kept_widths(space, kept))`.

`mask_channels` builds the "masked original" that state dict must reproduce: the base model with every
pruned channel's norm gamma and beta set to zero, so the channel is exactly zero after its BN. In eval mode
the sliced model then computes what the masked model computes (up to float summation order):

- plain chains (VGG): a zeroed channel stays zero through ReLU and pooling, so the next layer's input slice
  for it contributes nothing and can be dropped;
- residual streams with identity or projection (option C) shortcuts: the stream is one group, so the pruned
  channel is zeroed in *every* BN that writes into it (stem, each block's last BN, projection BN); identity
  adds and ReLUs keep zero at zero, so the channel is zero along the whole stage;
- concatenations (DenseNet, Inception): a consumer of `torch.cat` holds several groups side by side, so
  its input slice for each group is that group's kept channels shifted by the group's base offset; a
  pruned channel is zeroed in every norm that sees it, each concatenated consumer's slice included;
- zero-pad shortcuts (option A) have no parameters to mask: they route input channel i of one stream to
  channel i + (b - a) // 2 of the next by position, and the smaller model re-centres its own padding. So the
  two agree only when the kept indices of the two streams line up under both routings (see
  `check_pad_shortcuts`); otherwise `inherit_weights` refuses. Pruning methods keep such streams whole
  (`pad_linked_groups`), as Li et al. do for CIFAR ResNets, and prune only the blocks' inner widths.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from widthtune.models.channel_selection import ChannelSelection
from widthtune.models.resnet_cifar import PadShortcut
from widthtune.models.space import ChannelGroup, ChannelSpace
from widthtune.models.surgery import is_depthwise
from widthtune.models.widths import Widths

KeptIndices = Mapping[str, Sequence[int]]
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def complete_kept(space: ChannelSpace, kept: KeptIndices) -> dict[str, tuple[int, ...]]:
    """Validated kept indices for every group, sorted; a group not named keeps all its channels."""
    unknown = [str(name) for name in kept if name not in space]
    if unknown:
        raise ValueError(
            f"kept: unknown groups {', '.join(unknown[:6])}; groups are: {', '.join(space.names[:8])}"
            f"{' ...' if len(space) > 8 else ''}"
        )
    full: dict[str, tuple[int, ...]] = {}
    for group in space:
        if group.name not in kept:
            full[group.name] = tuple(range(group.base))
            continue
        raw = list(kept[group.name])
        exact = all(type(i) is int for i in raw)  # the common case, without the slow ABC check per index
        if not exact and any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in raw):
            raise ValueError(f"kept.{group.name}: channel indices must be integers")
        indices = sorted(int(i) for i in raw)
        if not indices:
            raise ValueError(f"kept.{group.name}: keeps no channel; a group needs at least one")
        if len(set(indices)) != len(indices):
            raise ValueError(f"kept.{group.name}: repeats a channel index")
        if indices[0] < 0 or indices[-1] >= group.base:
            raise ValueError(
                f"kept.{group.name}: indices must lie in [0, {group.base}), got {indices[0]}..{indices[-1]}"
            )
        full[group.name] = tuple(indices)
    return full


def kept_widths(space: ChannelSpace, kept: KeptIndices) -> Widths:
    """The width vector the kept indices describe (validated against minimums and divisors)."""
    full = complete_kept(space, kept)
    return Widths(space, tuple(len(full[name]) for name in space.names))


def top_channels(scores: Tensor, count: int) -> tuple[int, ...]:
    """The `count` highest-scored channels in their original order (ties: the lower index is kept)."""
    order = torch.sort(scores.detach().flatten().cpu(), descending=True, stable=True).indices
    return tuple(sorted(int(i) for i in order[:count]))


def _module(modules: Mapping[str, nn.Module], path: str) -> nn.Module:
    if path not in modules:
        raise ValueError(f"the model has no module {path!r} that its channel space names")
    return modules[path]


def _block_ends(model: nn.Module, path: str, space: ChannelSpace) -> tuple[ChannelGroup, ChannelGroup]:
    """(input group, output group) of a parameter-free shortcut: what its block's first conv reads, last norm writes."""
    owners = space.member_groups()
    block_path = path.rpartition(".")[0]
    children = list(model.get_submodule(block_path).named_children())
    prefix = f"{block_path}." if block_path else ""
    reads = [
        owners[(prefix + name, "in")]
        for name, child in children
        if isinstance(child, nn.Conv2d) and (prefix + name, "in") in owners
    ]
    writes = [
        owners[(prefix + name, "out")]
        for name, child in children
        if isinstance(child, NORMS) and (prefix + name, "out") in owners
    ]
    if not reads or not writes:
        raise ValueError(f"cannot tell which channel groups the shortcut {path!r} connects")
    return space.groups[reads[0]], space.groups[writes[-1]]


def pad_shortcuts(model: nn.Module, space: ChannelSpace) -> list[tuple[str, ChannelGroup, ChannelGroup]]:
    """Every zero-pad (option A) shortcut with the stream it reads and the stream it adds into."""
    return [
        (path, *_block_ends(model, path, space))
        for path, module in model.named_modules()
        if isinstance(module, PadShortcut)
    ]


def shuffled_groups(space: ChannelSpace) -> frozenset[str]:
    """Groups whose channels pass a channel shuffle, which routes them by position."""
    return frozenset(p for c in space.concats if c.shuffled for p in c.parts if isinstance(p, str))


def pad_linked_groups(model: nn.Module, space: ChannelSpace) -> frozenset[str]:
    """Groups a zero-pad shortcut or a channel shuffle routes by position: pruning methods keep them whole."""
    padded = {g.name for _, a, b in pad_shortcuts(model, space) for g in (a, b)}
    return frozenset(padded | shuffled_groups(space))


def _pad_target(channel: int, width_in: int, width_out: int) -> int | None:
    """Where a zero-pad shortcut puts input `channel`: centred when widening, cut off when narrowing."""
    if width_out >= width_in:
        return channel + (width_out - width_in) // 2
    return channel if channel < width_out else None


def check_pad_shortcuts(model: nn.Module, space: ChannelSpace, kept: KeptIndices) -> None:
    """Refuse kept indices under which a smaller model's re-centred zero-pad shortcut would route differently."""
    full = complete_kept(space, kept)
    for path, source, sink in pad_shortcuts(model, space):
        inputs, outputs = full[source.name], full[sink.name]
        for position, channel in enumerate(inputs):
            original = _pad_target(channel, source.base, sink.base)
            pruned = _pad_target(position, len(inputs), len(outputs))
            if (original is None) != (pruned is None) or (
                original is not None and outputs[pruned] != original
            ):
                raise ValueError(
                    f"kept: the zero-pad shortcut {path!r} would carry {source.name} channel {channel} to "
                    f"{sink.name} channel {original} in the base model but to a different one in the pruned "
                    "model; keep both streams whole or keep indices aligned under both paddings"
                )


Part = tuple[str | None, int]  # (group name, or None for channels no group owns; the base channel count)


@dataclass(frozen=True)
class Slice:
    """One dim of one state-dict entry: the groups it holds side by side, `factor` entries per channel.

    A plain member holds one group; a concatenation's consumer holds several in order (and may hold runs
    of channels no group owns, which are kept whole).
    """

    parts: tuple[Part, ...]
    factor: int = 1  # a linear reading a flattened C x H x W input holds H*W entries per channel

    @property
    def group(self) -> str | None:
        """The one group this dim holds whole, or None for a concatenation."""
        return self.parts[0][0] if len(self.parts) == 1 else None

    def index(self, kept: Mapping[str, Tensor | Sequence[int]], device: torch.device | None = None) -> Tensor:
        """The kept entry indices: each group's kept channels at its offset, expanded by `factor`."""
        pieces, offset = [], 0
        for name, count in self.parts:
            channels = torch.arange(count) if name is None else torch.as_tensor(kept[name], dtype=torch.long)
            pieces.append(channels.to(device) + offset)
            offset += count
        return expand_index(torch.cat(pieces) if len(pieces) > 1 else pieces[0], self.factor)


def expand_index(index: Tensor, factor: int) -> Tensor:
    """Channel indices to entry indices when each channel owns `factor` consecutive entries."""
    if factor == 1:
        return index
    return (index[:, None] * factor + torch.arange(factor, device=index.device)).flatten()


class _SlicePlan:
    """Which parts slice which dim of which state-dict entry, checked for size and conflicts."""

    def __init__(self, state: Mapping[str, Tensor]) -> None:
        self.state = state
        self.slices: dict[str, dict[int, Slice]] = {}

    def cut(self, key: str, dim: int, entry: Slice, owner: str) -> None:
        if key not in self.state:
            return  # e.g. a conv without bias
        actual, size = self.state[key].shape[dim], sum(count for _, count in entry.parts) * entry.factor
        if actual != size:
            raise ValueError(
                f"{key} has {actual} channels along dim {dim} but {owner} expects {size}: "
                "inherit from a model at the space's base widths"
            )
        previous = self.slices.setdefault(key, {}).setdefault(dim, entry)
        if previous != entry:
            raise ValueError(f"{key}: two channel groups slice dim {dim} differently ({owner})")


def _plan_member(plan: _SlicePlan, module: nn.Module, path: str, kind: str, parts: tuple[Part, ...]) -> None:
    """Plan the cuts of one layer dimension that holds `parts`."""
    owner = f"group {parts[0][0]}" if len(parts) == 1 else f"the concatenation at {path}"
    entry = Slice(parts)
    if isinstance(module, nn.Conv2d):
        if is_depthwise(module) or kind == "out":
            if module.groups > 1 and not is_depthwise(module):
                raise ValueError(f"{path}: grouped convs cannot inherit a channel subset")
            plan.cut(f"{path}.weight", 0, entry, owner)
            plan.cut(f"{path}.bias", 0, entry, owner)
        else:
            if module.groups > 1:
                raise ValueError(f"{path}: grouped convs cannot inherit a channel subset")
            plan.cut(f"{path}.weight", 1, entry, owner)
    elif isinstance(module, nn.Linear):
        if kind == "out":
            plan.cut(f"{path}.weight", 0, entry, owner)
            plan.cut(f"{path}.bias", 0, entry, owner)
        else:  # a flatten lays each channel's k values side by side: channel c owns [c*k, (c+1)*k)
            size = sum(count for _, count in parts)
            factor, rest = divmod(module.in_features, size)
            if rest:
                raise ValueError(f"{path}: {module.in_features} inputs are not a multiple of {size}")
            plan.cut(f"{path}.weight", 1, Slice(parts, factor), owner)
    elif isinstance(module, ChannelSelection):
        if kind == "out":  # which of the channels it reads it passes on: cut like any output dim
            plan.cut(f"{path}.indexes", 0, entry, owner)
    elif isinstance(module, NORMS):
        if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
            raise ValueError(f"{path}: only a LayerNorm over channels alone can be sliced")
        for key in BN_KEYS:
            plan.cut(f"{path}.{key}", 0, entry, owner)
    else:
        raise ValueError(f"cannot slice {path!r}: it is {type(module).__name__}, not a conv, linear or norm")


def channel_slices(model: nn.Module, space: ChannelSpace) -> dict[str, dict[int, Slice]]:
    """Per state-dict key of `model` (at the space's base widths), which groups slice each of its dims.

    Every member of every group is cut -- conv outputs and inputs, depthwise convs, norm affines and running
    statistics, linear inputs after a flatten, raw parameters -- and every concatenated consumer by its
    parts; keys no group touches are absent.
    """
    modules = dict(model.named_modules())
    plan = _SlicePlan(model.state_dict())
    for group in space:
        for member in group.members:
            if member.kind == "param":
                plan.cut(member.path, member.dim, Slice(((group.name, group.base),)), f"group {group.name}")
    for (path, kind), parts in space.layouts().items():
        if kind != "param":
            named = tuple((None if g is None else space.groups[g].name, count) for g, count in parts)
            _plan_member(plan, _module(modules, path), path, kind, named)
    return plan.slices


def _slices(space: ChannelSpace) -> dict[str, list[tuple[str, str, int]]]:
    """Per group, every layer dimension holding it and the base offset it starts at (a concat holds many)."""
    slices: dict[str, list[tuple[str, str, int]]] = {group.name: [] for group in space}
    for (path, kind), parts in space.layouts().items():
        if kind == "param":
            continue
        offset = 0
        for group, count in parts:
            if group is not None:
                slices[space.groups[group].name].append((path, kind, offset))
            offset += count
    return slices


def _check_shuffles(space: ChannelSpace, full: Mapping[str, tuple[int, ...]]) -> None:
    """A channel shuffle permutes channels by position, so no pruned group may pass one."""
    for name in sorted(shuffled_groups(space)):
        if len(full[name]) < space[name].base:
            raise ValueError(
                f"kept.{name}: its channels pass a channel shuffle, which routes them by position; keep "
                "this group whole (prune the groups no shuffle reaches)"
            )


def channel_cuts(model: nn.Module, space: ChannelSpace, kept: KeptIndices) -> dict[str, dict[int, Tensor]]:
    """Per state-dict key, the kept entry indices along each sliced dim (see `channel_slices`).

    Zero-pad shortcuts are not checked here (see `check_pad_shortcuts`): the cuts say what to keep, not
    whether the smaller model then computes what the masked original computes.
    """
    full = complete_kept(space, kept)
    kept_widths(space, full)  # minimums and divisors hold
    return _cuts(model, space, full)


def _cuts(
    model: nn.Module, space: ChannelSpace, full: Mapping[str, Sequence[int]]
) -> dict[str, dict[int, Tensor]]:
    return {
        key: {dim: entry.index(full) for dim, entry in dims.items()}
        for key, dims in channel_slices(model, space).items()
    }


def inherit_weights(model: nn.Module, space: ChannelSpace, kept: KeptIndices) -> dict[str, Tensor]:
    """State dict (CPU copies) for the model at `kept_widths(space, kept)`, cut from `model` at base widths.

    A concatenation's consumer keeps, for each group it holds, that group's kept channels at the group's
    offset, so every input slice follows its group.
    """
    full = complete_kept(space, kept)
    kept_widths(space, full)  # minimums and divisors hold
    cuts = _cuts(model, space, full)
    check_pad_shortcuts(model, space, full)
    _check_shuffles(space, full)
    inherited: dict[str, Tensor] = {}
    for key, tensor in model.state_dict().items():
        value = tensor.detach()
        for dim, index in cuts.get(key, {}).items():
            value = value.index_select(dim, index.to(value.device))
        inherited[key] = value.to("cpu", copy=True)
    for path, reads in _selection_inputs(model, space).items():
        inherited[f"{path}.indexes"] = _renumber(
            inherited[f"{path}.indexes"], reads.index(full).tolist(), path
        )
    return inherited


def _selection_inputs(model: nn.Module, space: ChannelSpace) -> dict[str, Slice]:
    """Each channel selection's path -> the channels it reads: one group, or a concatenation's parts."""
    selections = {path for path, m in model.named_modules() if isinstance(m, ChannelSelection)}
    return {
        path: Slice(tuple((None if g is None else space.groups[g].name, count) for g, count in parts))
        for (path, kind), parts in space.layouts().items()
        if kind == "in" and path in selections
    }


def selection_reads(model: nn.Module, space: ChannelSpace) -> dict[str, tuple[Slice, tuple[int, ...]]]:
    """Each selecting group -> what its selection reads and, per selected channel, the channel it reads
    there: a kept selected channel needs that channel kept too."""
    modules = dict(model.named_modules())
    owners = {(m.path, m.kind): g.name for g in space for m in g.members}
    return {
        owners[(path, "out")]: (reads, tuple(int(c) for c in modules[path].indexes.tolist()))
        for path, reads in _selection_inputs(model, space).items()
    }


def readable_channels(reads: Slice, sources: Sequence[int], kept: KeptIndices) -> tuple[int, ...]:
    """The positions of a selection whose source channel (in what it reads) is kept."""
    available = set(reads.index(kept).tolist())
    return tuple(i for i, channel in enumerate(sources) if channel in available)


def follow_sources(
    model: nn.Module, space: ChannelSpace, kept: KeptIndices, groups: Iterable[str]
) -> dict[str, tuple[int, ...]]:
    """Kept channels where each selecting group among `groups` (ones a method does not rank itself) keeps
    exactly the selected channels whose source channel is kept, so a pruned stream prunes its selections."""
    full = complete_kept(space, kept)
    for group, (reads, sources) in selection_reads(model, space).items():
        if group in groups:
            full[group] = readable_channels(reads, sources, full)
    return full


def _renumber(selected: Tensor, kept: Sequence[int], path: str) -> Tensor:
    """A selection's channels (base indices of what it reads) as positions among the kept ones it reads."""
    position = {channel: i for i, channel in enumerate(kept)}
    missing = [int(c) for c in selected.tolist() if int(c) not in position]
    if missing:
        raise ValueError(
            f"{path}: selects channels {missing[:5]} of a group that does not keep them; keep them in both"
        )
    return torch.tensor([position[int(c)] for c in selected.tolist()], dtype=torch.long)


@torch.no_grad()
def mask_channels(model: nn.Module, space: ChannelSpace, kept: KeptIndices) -> nn.Module:
    """Zero pruned channels in place: norm gamma and beta wherever the group is normed (each concatenated
    consumer's slice too), and its writers' rows, so a channel is zero also where no norm follows its
    writer (a pre-activation stream that a projection reads raw)."""
    full = complete_kept(space, kept)
    modules = dict(model.named_modules())
    slices = _slices(space)
    for group in space:
        pruned = sorted(set(range(group.base)) - set(full[group.name]))
        if not pruned:
            continue
        index = torch.tensor(pruned, dtype=torch.long)
        normed = [
            (_module(modules, path), offset)
            for path, _, offset in slices[group.name]
            if isinstance(modules.get(path), NORMS)
        ]
        for norm, offset in normed:
            if norm.weight is None:
                raise ValueError(f"group {group.name}: a norm without affine parameters cannot be masked")
            norm.weight[(index + offset).to(norm.weight.device)] = 0
            if norm.bias is not None:
                norm.bias[(index + offset).to(norm.bias.device)] = 0
        for member in group.members:
            if member.kind == "param":
                param = model.get_parameter(member.path)
                param.index_fill_(member.dim, index.to(param.device), 0)
        for path, kind, offset in slices[group.name]:
            module = _module(modules, path)
            writes = kind == "out" or (isinstance(module, nn.Conv2d) and is_depthwise(module))
            if writes and isinstance(module, nn.Conv2d | nn.Linear):
                module.weight[(index + offset).to(module.weight.device)] = 0
                if module.bias is not None:
                    module.bias[(index + offset).to(module.bias.device)] = 0
    return model
