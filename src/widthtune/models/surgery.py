"""Module surgery: give every member of a channel group its new width, with freshly initialised parameters."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

import torch
from torch import nn

from widthtune.models.space import ChannelSpace


class SurgeryError(ValueError):
    """A model holds a layer kind whose channels the surgery cannot resize."""


def is_depthwise(conv: nn.Conv2d) -> bool:
    """A conv with one input channel per output channel group (it follows its input group)."""
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def fresh_like(old: torch.Tensor, shape: tuple[int, ...], fan_ratio: float = 1.0) -> torch.Tensor:
    """A new tensor drawn like `old` was: constants stay constant, random ones keep mean and fan-scaled std."""
    flat = old.detach().flatten()
    if flat.numel() == 0 or bool((flat == flat[0]).all()):
        return torch.full(shape, flat[0].item() if flat.numel() else 0.0, dtype=old.dtype, device=old.device)
    std = flat.float().std().item() * math.sqrt(fan_ratio)
    return (torch.randn(shape, device=old.device) * std + flat.float().mean().item()).to(old.dtype)


def _new_parameter(old: nn.Parameter, shape: tuple[int, ...], fan_ratio: float = 1.0) -> nn.Parameter:
    return nn.Parameter(fresh_like(old, shape, fan_ratio), requires_grad=old.requires_grad)


def _resize_conv(conv: nn.Conv2d, out: int | None, inp: int | None) -> None:
    if is_depthwise(conv):
        out = inp = out or inp
    out = out or conv.out_channels
    inp = inp or conv.in_channels
    if (out, inp) == (conv.out_channels, conv.in_channels):
        return  # unchanged layers keep the factory's own initialisation
    if is_depthwise(conv):
        conv.groups = out
    for count, kind in ((out, "output"), (inp, "input")):
        if count % conv.groups:
            raise SurgeryError(f"conv with {conv.groups} groups cannot take {count} {kind} channels")
    shape = (out, inp // conv.groups, *conv.kernel_size)
    conv.weight = _new_parameter(conv.weight, shape, conv.out_channels / out)
    if conv.bias is not None:
        conv.bias = _new_parameter(conv.bias, (out,))
    conv.out_channels, conv.in_channels = out, inp


def _resize_linear(linear: nn.Linear, out: int | None, inp: int | None, in_factor: int) -> None:
    out = out or linear.out_features
    inp = inp * in_factor if inp else linear.in_features
    if (out, inp) == (linear.out_features, linear.in_features):
        return
    linear.weight = _new_parameter(linear.weight, (out, inp), linear.in_features / inp)
    if linear.bias is not None:
        linear.bias = _new_parameter(linear.bias, (out,))
    linear.out_features, linear.in_features = out, inp


def _norm_width(norm: nn.Module) -> int:
    if isinstance(norm, nn.LayerNorm):
        return norm.normalized_shape[-1]
    return norm.num_channels if isinstance(norm, nn.GroupNorm) else norm.num_features


def _resize_norm(norm: nn.Module, width: int) -> None:
    if width == _norm_width(norm):
        return
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        norm.num_features = width
        if norm.running_mean is not None:
            norm.running_mean = torch.zeros(width, device=norm.running_mean.device)
            norm.running_var = torch.ones(width, device=norm.running_var.device)
            norm.num_batches_tracked = torch.zeros((), dtype=torch.long, device=norm.running_mean.device)
    elif isinstance(norm, nn.LayerNorm):
        if len(norm.normalized_shape) != 1:
            raise SurgeryError("only LayerNorm over the channel dimension alone can be resized")
        norm.normalized_shape = (width,)
    elif isinstance(norm, nn.GroupNorm):
        if width % norm.num_groups:
            raise SurgeryError(f"GroupNorm with {norm.num_groups} groups cannot take {width} channels")
        norm.num_channels = width
    for name in ("weight", "bias"):
        param = getattr(norm, name, None)
        if param is not None:
            setattr(norm, name, _new_parameter(param, (width,)))


def resize(model: nn.Module, space: ChannelSpace, widths: Mapping[str, int]) -> nn.Module:
    """Resize `model` in place to `widths` (smaller or larger than its own); returns it for chaining."""
    modules = dict(model.named_modules())
    sizes: dict[str, dict[str, int]] = defaultdict(dict)
    in_factor: dict[str, int] = {}
    raw: dict[str, dict[int, int]] = defaultdict(dict)
    for group in space:
        for member in group.members:
            if member.kind == "param":
                raw[member.path][member.dim] = widths[group.name]
    for (path, kind), parts in space.layouts().items():
        if kind == "param":
            continue
        # a concatenation's width is its parts' sum; channels no group owns keep their count
        sizes[path][kind] = sum(
            count if group is None else widths[space.groups[group].name] for group, count in parts
        )
        module = modules.get(path)
        if isinstance(module, nn.Linear) and kind == "in":
            in_factor[path] = module.in_features // sum(count for _, count in parts)
    for path, size in sizes.items():
        module = modules.get(path)
        if isinstance(module, nn.Conv2d):
            _resize_conv(module, size.get("out"), size.get("in"))
        elif isinstance(module, nn.Linear):
            _resize_linear(module, size.get("out"), size.get("in"), in_factor.get(path, 1))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
            _resize_norm(module, size.get("out") or size["in"])
        else:
            kind = type(module).__name__ if module is not None else "nothing"
            raise SurgeryError(f"cannot resize {path!r}: it is {kind}, not a Conv2d, Linear or norm layer")
    for path, dims in raw.items():
        owner_path, _, name = path.rpartition(".")
        owner = modules[owner_path]
        old = getattr(owner, name)
        shape = list(old.shape)
        for dim, width in dims.items():
            shape[dim] = width
        if tuple(shape) != tuple(old.shape):
            setattr(owner, name, _new_parameter(old, tuple(shape)))
    return model
