"""Channel groups of any traceable model, read from Torch-Pruning's dependency graph."""

from __future__ import annotations

import math
import warnings

import torch
import torch_pruning as tp
from torch import nn

from widthtune.models.space import ChannelGroup, ChannelSpace, Member
from widthtune.models.surgery import is_depthwise

RESIZABLE = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


class UnsupportedModelError(ValueError):
    """The model couples channels in a way width vectors cannot express (concatenation, channel split)."""


def _failed_node(error: BaseException) -> object | None:
    """The graph node Torch-Pruning was mapping when its trace raised (the innermost frame that held one)."""
    node, frame = None, error.__traceback__
    while frame is not None:
        local = frame.tb_frame.f_locals
        found = local.get("reshape_node", local.get("node"))
        if found is not None and hasattr(found, "module"):
            node = found
        frame = frame.tb_next
    return node


def _trace(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's graph of the model; a failure inside its trace is one line naming the op it stopped at."""
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as error:  # Torch-Pruning's own failure on a graph it cannot map
        node = _failed_node(error)
        op = type(getattr(node, "module", None)).__name__ if node is not None else ""
        where = f" at {getattr(node, 'name', op)}" if node is not None else ""
        why = (
            "a reshape that mixes channels across groups (a channel shuffle) cannot be expressed as widths"
            if "Reshape" in op
            else "the channel dependency graph cannot be built for this model"
        )
        raise UnsupportedModelError(
            f"channel tracing stopped{where} ({type(error).__name__}: {error}): {why}"
        ) from None


def _classifier(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The last conv or linear run in forward: its output channels are the classes, never a group."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: order.append(mod))
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    if not order:
        raise UnsupportedModelError("the model runs no Conv2d or Linear layer, so it has no channel groups")
    return order[-1]


def dependency_space(
    model: nn.Module, example: torch.Tensor, *, min_width: int = 1, divisor: int = 1
) -> ChannelSpace:
    """One group per set of coupled channels, named after the first layer (in module order) that writes it."""
    model.eval()
    classifier = _classifier(model, example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = _trace(model, example)
        raw_groups = graph.get_all_groups(
            ignored_layers=[classifier], root_module_types=[nn.Conv2d, nn.Linear]
        )
    module_names = {module: name for name, module in model.named_modules()}
    param_names = {id(p): name for name, p in model.named_parameters()}
    order = {name: i for i, name in enumerate(module_names.values())}
    groups = []
    for raw in raw_groups:
        members: list[Member] = []
        group_divisor = divisor
        for dep, _ in raw:
            target = dep.target.module
            handler = getattr(dep.handler, "__name__", "")
            kind = "in" if "in_channels" in handler else "out"
            if isinstance(target, nn.Parameter):
                members.append(Member(param_names[id(target)], "param", _param_dim(target, len(raw[0][1]))))
            elif isinstance(target, RESIZABLE):
                if isinstance(target, nn.Conv2d) and target.groups > 1 and not is_depthwise(target):
                    group_divisor = math.lcm(group_divisor, target.groups)
                if isinstance(target, nn.GroupNorm):
                    group_divisor = math.lcm(group_divisor, target.num_groups)
                member = Member(module_names[target], kind)
                if member not in members:
                    members.append(member)
            elif type(target).__name__ in ("_ConcatOp", "_SplitOp", "_UnbindOp"):
                raise UnsupportedModelError(
                    "the model concatenates or splits channels; width vectors support residual adds, "
                    "depthwise and grouped convs, but not channel concatenation or splits"
                )
        writers = [
            m
            for m in members
            if m.kind == "out" and isinstance(model.get_submodule(m.path), nn.Conv2d | nn.Linear)
        ]
        if not writers:
            continue
        writers.sort(key=lambda m: order[m.path])
        base = len(raw[0][1])
        role = "stream" if len(writers) > 1 else "conv"
        groups.append(
            (
                order[writers[0].path],
                ChannelGroup(
                    writers[0].path,
                    base,
                    tuple(members),
                    min=max(min_width, group_divisor),
                    divisor=group_divisor,
                    role=role,
                ),
            )
        )
    groups.sort(key=lambda item: item[0])
    return ChannelSpace(tuple(group for _, group in groups))


def _param_dim(param: nn.Parameter, width: int) -> int:
    """The channel dimension of a raw parameter (e.g. ConvNeXt's layer scale): the first of that size."""
    for dim, size in enumerate(param.shape):
        if size == width:
            return dim
    raise UnsupportedModelError(f"a parameter of shape {tuple(param.shape)} is coupled to {width} channels")
