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
- zero-pad shortcuts (option A) have no parameters to mask: they route input channel i of one stream to
  channel i + (b - a) // 2 of the next by position, and the smaller model re-centres its own padding. So the
  two agree only when the kept indices of the two streams line up under both routings (see
  `check_pad_shortcuts`); otherwise `inherit_weights` refuses. Pruning methods keep such streams whole
  (`pad_linked_groups`), as Li et al. do for CIFAR ResNets, and prune only the blocks' inner widths.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

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


def pad_linked_groups(model: nn.Module, space: ChannelSpace) -> frozenset[str]:
    """Groups a zero-pad shortcut routes by position: pruning methods keep them whole."""
    return frozenset(g.name for _, a, b in pad_shortcuts(model, space) for g in (a, b))


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


@dataclass(frozen=True)
class Slice:
    """One dim of one state-dict entry that a channel group slices, `factor` entries per channel."""

    group: str
    factor: int = 1  # a linear reading a flattened C x H x W input holds H*W entries per channel


def expand_index(index: Tensor, factor: int) -> Tensor:
    """Channel indices to entry indices when each channel owns `factor` consecutive entries."""
    if factor == 1:
        return index
    return (index[:, None] * factor + torch.arange(factor, device=index.device)).flatten()


class _SlicePlan:
    """Which group slices which dim of which state-dict entry, checked for size and conflicts."""

    def __init__(self, state: Mapping[str, Tensor]) -> None:
        self.state = state
        self.slices: dict[str, dict[int, Slice]] = {}

    def cut(self, key: str, dim: int, group: ChannelGroup, factor: int = 1) -> None:
        if key not in self.state:
            return  # e.g. a conv without bias
        actual, size = self.state[key].shape[dim], group.base * factor
        if actual != size:
            raise ValueError(
                f"{key} has {actual} channels along dim {dim} but group {group.name} expects {size}: "
                "inherit from a model at the space's base widths"
            )
        entry = Slice(group.name, factor)
        previous = self.slices.setdefault(key, {}).setdefault(dim, entry)
        if previous != entry:
            raise ValueError(f"{key}: two channel groups slice dim {dim} ({previous.group}, {group.name})")


def _plan_member(plan: _SlicePlan, module: nn.Module, path: str, kind: str, group: ChannelGroup) -> None:
    if isinstance(module, nn.Conv2d):
        if is_depthwise(module) or kind == "out":
            if module.groups > 1 and not is_depthwise(module):
                raise ValueError(f"{path}: grouped convs cannot inherit a channel subset")
            plan.cut(f"{path}.weight", 0, group)
            plan.cut(f"{path}.bias", 0, group)
        else:
            if module.groups > 1:
                raise ValueError(f"{path}: grouped convs cannot inherit a channel subset")
            plan.cut(f"{path}.weight", 1, group)
    elif isinstance(module, nn.Linear):
        if kind == "out":
            plan.cut(f"{path}.weight", 0, group)
            plan.cut(f"{path}.bias", 0, group)
        else:  # a flatten lays each channel's k values side by side: channel c owns [c*k, (c+1)*k)
            factor, rest = divmod(module.in_features, group.base)
            if rest:
                raise ValueError(f"{path}: {module.in_features} inputs are not a multiple of {group.base}")
            plan.cut(f"{path}.weight", 1, group, factor)
    elif isinstance(module, NORMS):
        if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
            raise ValueError(f"{path}: only a LayerNorm over channels alone can be sliced")
        for key in BN_KEYS:
            plan.cut(f"{path}.{key}", 0, group)
    else:
        raise ValueError(f"cannot slice {path!r}: it is {type(module).__name__}, not a conv, linear or norm")


def channel_slices(model: nn.Module, space: ChannelSpace) -> dict[str, dict[int, Slice]]:
    """Per state-dict key of `model` (at the space's base widths), which group slices each of its dims.

    Every member of every group is cut -- conv outputs and inputs, depthwise convs, norm affines and running
    statistics, linear inputs after a flatten, raw parameters; keys no group touches are absent.
    """
    modules = dict(model.named_modules())
    plan = _SlicePlan(model.state_dict())
    for group in space:
        for member in group.members:
            if member.kind == "param":
                plan.cut(member.path, member.dim, group)
            else:
                _plan_member(plan, _module(modules, member.path), member.path, member.kind, group)
    return plan.slices


def channel_cuts(model: nn.Module, space: ChannelSpace, kept: KeptIndices) -> dict[str, dict[int, Tensor]]:
    """Per state-dict key, the kept entry indices along each sliced dim (see `channel_slices`).

    Zero-pad shortcuts are not checked here (see `check_pad_shortcuts`): the cuts say what to keep, not
    whether the smaller model then computes what the masked original computes.
    """
    full = complete_kept(space, kept)
    kept_widths(space, full)  # minimums and divisors hold
    indices = {name: torch.tensor(full[name], dtype=torch.long) for name in space.names}
    return {
        key: {dim: expand_index(indices[cut.group], cut.factor) for dim, cut in dims.items()}
        for key, dims in channel_slices(model, space).items()
    }


def inherit_weights(model: nn.Module, space: ChannelSpace, kept: KeptIndices) -> dict[str, Tensor]:
    """State dict (CPU copies) for the model at `kept_widths(space, kept)`, cut from `model` at base widths."""
    cuts = channel_cuts(model, space, kept)
    check_pad_shortcuts(model, space, kept)
    inherited: dict[str, Tensor] = {}
    for key, tensor in model.state_dict().items():
        value = tensor.detach()
        for dim, index in cuts.get(key, {}).items():
            value = value.index_select(dim, index.to(value.device))
        inherited[key] = value.to("cpu", copy=True)
    return inherited


@torch.no_grad()
def mask_channels(model: nn.Module, space: ChannelSpace, kept: KeptIndices) -> nn.Module:
    """Zero pruned channels in place (norm gamma and beta; a group without norms: its writers' rows)."""
    full = complete_kept(space, kept)
    modules = dict(model.named_modules())
    for group in space:
        pruned = sorted(set(range(group.base)) - set(full[group.name]))
        if not pruned:
            continue
        index = torch.tensor(pruned, dtype=torch.long)
        norms = [
            _module(modules, m.path)
            for m in group.members
            if m.kind != "param" and isinstance(modules.get(m.path), NORMS)
        ]
        for norm in norms:
            if norm.weight is None:
                raise ValueError(f"group {group.name}: a norm without affine parameters cannot be masked")
            norm.weight[index.to(norm.weight.device)] = 0
            if norm.bias is not None:
                norm.bias[index.to(norm.bias.device)] = 0
        if norms:
            continue
        for member in group.members:
            if member.kind == "param":
                param = model.get_parameter(member.path)
                param.index_fill_(member.dim, index.to(param.device), 0)
                continue
            module = _module(modules, member.path)
            writes = member.kind == "out" or (isinstance(module, nn.Conv2d) and is_depthwise(module))
            if writes and isinstance(module, nn.Conv2d | nn.Linear):
                module.weight[index.to(module.weight.device)] = 0
                if module.bias is not None:
                    module.bias[index.to(module.bias.device)] = 0
    return model
