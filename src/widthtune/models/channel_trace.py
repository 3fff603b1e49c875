"""Channel layouts followed through one forward pass: which width unknowns each layer dimension holds, in order.

Every conv and linear output is a fresh unknown (its channel count). A `TorchFunctionMode` carries each
tensor's layout -- the unknowns side by side along its channel axis -- through the ops between layers:

- adds, multiplies and other elementwise ops equate their operands' layouts (residual streams, SE gates);
- `cat` on the channel axis lays its inputs' layouts end to end, so a consumer sees them in order;
- `chunk` cuts a layout into equal pieces and ties them (one unknown for all); `split` with sizes, slicing
  with literal bounds and `unbind` pin the pieces they name at their traced size;
- views, flattens and permutes move the channel axis; splitting it into (g, C/g), transposing and merging
  it back (a channel shuffle) keeps the widths but permutes the channels, so the block is marked shuffled.

Equating two layouts aligns them by their traced sizes and splits an unknown where the other side has a
boundary, so a conv output added to a concatenation becomes that concatenation. What reaches the model's
outputs is pinned (the classes). Anything the tracer cannot follow raises `UnsupportedModelError` naming
the layer and the op.
"""

from __future__ import annotations

import copy
import math
import weakref
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from widthtune.models.unknowns import Layout, Part, Shuffled, Unknowns, UnsupportedModelError

__all__ = ["ChannelTracer", "Channels", "MemberKey", "Trace", "UnsupportedModelError", "trace_channels"]

MemberKey = tuple[str, str, int]  # (module or parameter path, "out" | "in" | "param", dim)
RESIZABLE = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
# Ops that mix channels with weights the tracer does not own: only Conv2d and Linear modules may do that.
MIXING = {
    "linear", "matmul", "mm", "bmm", "baddbmm", "addmm", "einsum", "bilinear", "conv1d", "conv2d", "conv3d",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "multi_head_attention_forward",
    "scaled_dot_product_attention", "embedding", "prelu", "batch_norm", "group_norm", "layer_norm",
    "instance_norm", "__matmul__", "__rmatmul__", "tensordot", "index_select", "gather", "take_along_dim",
}  # fmt: skip
CATS = {"cat", "concat", "concatenate"}
SPLITS = {"chunk", "split", "split_with_sizes", "tensor_split", "unbind"}
RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
PERMUTES = {"transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis"}


@dataclass(frozen=True)
class Channels:
    """Where a tensor's channels are: the axis, their layout, and how a view may have reshaped that axis."""

    axis: int
    layout: Layout
    repeat: int = 1  # after a flatten, each channel spans this many consecutive positions
    split: tuple[int, int] | None = None  # the axis is split over (axis, axis + 1) with these sizes
    swapped: bool = False  # ... and those two axes are transposed


@dataclass
class Trace:
    """What one model's forward passes said: each layer dimension's layout, and the divisibility they need."""

    unknowns: Unknowns = field(default_factory=Unknowns)
    members: dict[MemberKey, Layout] = field(default_factory=dict)
    divisible: list[tuple[Layout, int]] = field(default_factory=list)


def _tensors(value: object) -> list[torch.Tensor]:
    """Tensors in a value, a sequence, a mapping or a (named) tuple of them, one level deep at each step."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


def _prod(values) -> int:
    return math.prod(int(v) for v in values)


def _dims(value: object, ndim: int) -> list[int] | None:
    if isinstance(value, int):
        return [value % ndim]
    if isinstance(value, list | tuple) and all(isinstance(v, int) for v in value):
        return [v % ndim for v in value]
    return None


class ChannelTracer(TorchFunctionMode):
    """Runs a model once, following every tensor's channel layout; results land in a `Trace`."""

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace
        self.unknowns = trace.unknowns
        self._states: dict[int, tuple[weakref.ref, Channels]] = {}
        self._stack: list[str] = []
        self._inside = 0  # > 0 while a resizable layer runs its own forward
        self._params: dict[int, str] = {}
        self._paths: dict[nn.Module, str] = {}
        self.ran: set[str] = set()

    # --- running ---------------------------------------------------------------------------------------
    def run(self, model: nn.Module, example: torch.Tensor) -> None:
        """One forward pass of `model` on `example` under the tracer (modes as the model is set)."""
        self._paths = {module: path for path, module in model.named_modules()}
        self._params = {id(p): name for name, p in model.named_parameters()}
        hooks = []
        for module in model.modules():
            hooks.append(module.register_forward_pre_hook(self._enter))
            hooks.append(module.register_forward_hook(self._leave))
        image = self.unknowns.new(example.shape[1], fixed=True)
        try:
            with torch.no_grad(), self:
                self._set(example, Channels(1, (image,)))
                output = model(example)
                for tensor in _tensors(output):
                    state = self._get(tensor)
                    if state is not None:
                        self.unknowns.fix(state.layout)
        finally:
            for hook in hooks:
                hook.remove()
            self._stack.clear()
            self._inside = 0

    def _where(self, op: str | None = None) -> str:
        module = self._stack[-1] if self._stack else ""
        place = f"layer {module!r}" if module else "the model's forward"
        return f"{place} ({op})" if op else place

    def _enter(self, module: nn.Module, _inputs: tuple) -> None:
        self._stack.append(self._paths.get(module, type(module).__name__))
        if isinstance(module, RESIZABLE):
            self._inside += 1

    def _leave(self, module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(module, RESIZABLE):
            self._inside -= 1
            if self._inside == 0:
                self._layer(module, self._stack[-1], inputs, output)
        self._stack.pop()

    # --- tensor states ---------------------------------------------------------------------------------
    def _get(self, tensor: torch.Tensor) -> Channels | None:
        entry = self._states.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return None
        return entry[1]

    def _set(self, tensor: torch.Tensor, state: Channels | None) -> None:
        if state is not None:
            self._states[id(tensor)] = (weakref.ref(tensor), state)

    def _record(self, key: MemberKey, layout: Layout, where: str) -> Layout:
        previous = self.trace.members.get(key)
        if previous is None:
            self.trace.members[key] = layout
            return layout
        self.unknowns.unify(previous, layout, where)
        return previous

    # --- resizable layers --------------------------------------------------------------------------------
    def _layer(self, module: nn.Module, path: str, inputs: tuple, output: object) -> None:
        self.ran.add(path)
        if not inputs or not isinstance(inputs[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            raise UnsupportedModelError(f"layer {path!r}: takes or returns something other than one tensor")
        x = inputs[0]
        state = self._get(x)
        if state is None:  # a tensor the trace did not see made: its channels are whatever it holds
            axis = x.dim() - 1 if isinstance(module, nn.Linear | nn.LayerNorm) else 1
            state = Channels(axis, (self.unknowns.new(x.shape[axis], fixed=True),))
        kind = type(module).__name__
        if state.split is not None:
            raise UnsupportedModelError(f"layer {path!r} ({kind}): reads channels split over two axes")
        if isinstance(module, nn.Linear):
            if state.axis != x.dim() - 1:
                raise UnsupportedModelError(f"layer {path!r} (Linear): its last axis is not the channel axis")
            self._record((path, "in", 0), state.layout, f"layer {path!r}")
            out = self._writer(path, module.out_features)
            self._set(output, Channels(output.dim() - 1, out))
            return
        if state.repeat != 1:
            raise UnsupportedModelError(f"layer {path!r} ({kind}): reads flattened channels")
        if isinstance(module, nn.Conv2d):
            if state.axis != 1:
                raise UnsupportedModelError(f"layer {path!r} (Conv2d): axis 1 is not the channel axis")
            if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
                out = self._record((path, "out", 0), state.layout, f"layer {path!r}")
            else:
                if module.groups > 1 and module.groups == module.in_channels:
                    raise UnsupportedModelError(
                        f"layer {path!r} (Conv2d): a depthwise conv with a channel multiplier "
                        f"({module.in_channels} -> {module.out_channels}) cannot follow its input's width"
                    )
                self._record((path, "in", 0), state.layout, f"layer {path!r}")
                out = self._writer(path, module.out_channels)
                if module.groups > 1:
                    self.trace.divisible += [(state.layout, module.groups), (out, module.groups)]
            self._set(output, Channels(1, out))
            return
        # norms: the channels pass through unchanged
        if isinstance(module, nn.LayerNorm) and (
            len(module.normalized_shape) != 1
            or x.shape[state.axis] != module.normalized_shape[0]
            or (type(module) is nn.LayerNorm and state.axis != x.dim() - 1)
        ):
            raise UnsupportedModelError(f"layer {path!r} ({kind}): normalises other axes than the channels")
        if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.GroupNorm) and state.axis != 1:
            raise UnsupportedModelError(f"layer {path!r} ({kind}): axis 1 is not the channel axis")
        layout = self._record((path, "out", 0), state.layout, f"layer {path!r}")
        if isinstance(module, nn.GroupNorm):
            self.trace.divisible.append((layout, module.num_groups))
        self._set(output, replace(state, layout=layout))

    def _writer(self, path: str, channels: int) -> Layout:
        key = (path, "out", 0)
        if key not in self.trace.members:
            self.trace.members[key] = (self.unknowns.new(channels),)
        return self.trace.members[key]

    # --- ops between layers ----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._inside:
            return out
        outputs = _tensors(out) if isinstance(out, torch.Tensor | tuple | list) else []
        if outputs:
            name = getattr(func, "__name__", str(func))
            try:
                self._propagate(name, args, kwargs, outputs)
            except UnsupportedModelError:
                raise
            except Exception as error:  # a case the rules below did not foresee: say where, not how
                raise UnsupportedModelError(
                    f"{self._where(name)}: cannot follow channels ({type(error).__name__}: {error})"
                ) from None
        return out

    def _propagate(self, name: str, args: tuple, kwargs: dict, outputs: list[torch.Tensor]) -> None:
        inputs = [t for t in _tensors(list(args) + list(kwargs.values())) if self._get(t) is not None]
        if not inputs:
            return
        where = self._where(name)
        if name in MIXING:
            raise UnsupportedModelError(
                f"{where}: mixes channels outside a Conv2d or Linear layer, so no width can follow them"
            )
        if name in CATS:
            self._cat(args, kwargs, outputs[0], where)
        elif name in SPLITS:
            self._split(name, args, kwargs, outputs, where)
        elif name == "__getitem__":
            self._getitem(args[0], args[1], outputs[0], where)
        elif name in RESHAPES:
            self._reshape(args[0], outputs[0], where)
        elif name in PERMUTES:
            self._permute(name, args, kwargs, outputs[0], where)
        else:
            self._elementwise(args, kwargs, outputs, where)

    def _cat(self, args: tuple, kwargs: dict, out: torch.Tensor, where: str) -> None:
        tensors = list(args[0] if args else kwargs["tensors"])
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        dim %= out.dim()
        states = [self._get(t) for t in tensors]
        known = [s for s in states if s is not None]
        if any(s.split is not None for s in known):
            raise UnsupportedModelError(f"{where}: concatenates channels split over two axes")
        axes = {s.axis for s in known}
        if len(axes) > 1:
            raise UnsupportedModelError(f"{where}: concatenates tensors with channels on different axes")
        axis = axes.pop()
        if dim != axis:  # stacking along another axis (tokens): the channels of all inputs are one
            self._elementwise(args, kwargs, [out], where)
            return
        repeats = {s.repeat for s in known}
        if len(repeats) > 1:
            raise UnsupportedModelError(f"{where}: concatenates channels flattened with different sizes")
        repeat = repeats.pop()
        layout: list[Part] = []
        for tensor, state in zip(tensors, states, strict=True):
            if state is None:
                layout.append(self.unknowns.new(tensor.shape[dim] // repeat, fixed=True))
            else:
                layout.extend(state.layout)
        self._set(out, Channels(axis, tuple(layout), repeat))

    def _split(self, name: str, args: tuple, kwargs: dict, outputs: list[torch.Tensor], where: str) -> None:
        tensor = args[0]
        state = self._get(tensor)
        if state is None:
            return
        dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        if name == "unbind":
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        dim %= tensor.dim()
        if state.split is not None and dim in (state.axis, state.axis + 1):
            raise UnsupportedModelError(f"{where}: splits channels that are split over two axes")
        if dim != state.axis:
            moved = state.axis - (1 if name == "unbind" and dim < state.axis else 0)
            for out in outputs:
                self._set(out, replace(state, axis=moved))
            return
        if name == "unbind":
            self.unknowns.fix(state.layout)
            return
        sizes = [int(out.shape[dim]) // state.repeat for out in outputs]
        layout = state.layout
        shuffled = len(layout) == 1 and isinstance(layout[0], Shuffled)
        if name == "chunk" and len(set(sizes)) == 1:
            inner = layout[0].parts if shuffled else layout
            pieces = self.unknowns.cut(inner, sizes, where)
            for piece in pieces[1:]:  # chunk's pieces follow the tensor: equal widths, one unknown
                self.unknowns.unify(pieces[0], piece, where)
            if shuffled:
                pieces = [(Shuffled(piece),) for piece in pieces]
        else:  # declared sizes stay what the model's code says
            pieces = self.unknowns.cut(layout, sizes, where)
            for piece in pieces:
                self.unknowns.fix(piece)
        for out, piece in zip(outputs, pieces, strict=True):
            self._set(out, replace(state, layout=piece))

    def _getitem(self, tensor: torch.Tensor, index: object, out: torch.Tensor, where: str) -> None:
        state = self._get(tensor)
        if state is None:
            return
        items = list(index) if isinstance(index, tuple) else [index]
        if any(isinstance(i, torch.Tensor | list) for i in items):
            raise UnsupportedModelError(
                f"{where}: indexes a tensor with a tensor or list, which the channel trace cannot follow"
            )
        if Ellipsis in items:
            at = items.index(Ellipsis)
            fill = tensor.dim() - sum(1 for i in items if i is not None and i is not Ellipsis)
            items = items[:at] + [slice(None)] * fill + items[at + 1 :]
        items += [slice(None)] * (tensor.dim() - sum(1 for i in items if i is not None))
        in_dim = out_dim = 0
        for item in items:
            if item is None:
                out_dim += 1
                continue
            if in_dim == state.axis or (state.split is not None and in_dim == state.axis + 1):
                if not isinstance(item, slice) or item != slice(None):
                    if state.split is not None:
                        raise UnsupportedModelError(f"{where}: indexes channels split over two axes")
                    self._slice_channels(state, item, int(tensor.shape[in_dim]), out, out_dim, where)
                    return
                if in_dim == state.axis:
                    axis = out_dim
            if not isinstance(item, int):
                out_dim += 1
            in_dim += 1
        self._set(out, replace(state, axis=axis))

    def _slice_channels(
        self, state: Channels, item: object, size: int, out: torch.Tensor, axis: int, where: str
    ) -> None:
        if isinstance(item, int) or state.repeat != 1:
            self.unknowns.fix(state.layout)
            return
        start, stop, step = item.indices(size)  # type: ignore[union-attr]
        if step != 1:
            raise UnsupportedModelError(f"{where}: takes every {step}th channel")
        before, taken, _ = self.unknowns.cut(state.layout, [start, stop - start, size - stop], where)
        self.unknowns.fix(before)
        if stop < size:
            self.unknowns.fix(taken)  # a literal end: the slice keeps its size whatever the width
        self._set(out, Channels(axis, taken))

    def _reshape(self, tensor: torch.Tensor, out: torch.Tensor, where: str) -> None:
        state = self._get(tensor)
        if state is None:
            return
        shape_in, shape_out = list(tensor.shape), list(out.shape)
        if shape_in[state.axis] == 1:  # a one-channel axis cannot be told from a broadcast one: keep it one
            self.unknowns.fix(state.layout)
            return
        if state.split is not None:
            self._merge_split(state, shape_in, shape_out, out, where)
            return
        start = _prod(shape_in[: state.axis])
        size = shape_in[state.axis]
        prefixes = [_prod(shape_out[:i]) for i in range(len(shape_out) + 1)]
        if start not in prefixes:
            raise UnsupportedModelError(f"{where}: merges the channel axis with the axes before it")
        first = max(i for i, p in enumerate(prefixes) if p == start)
        if first == len(shape_out):
            raise UnsupportedModelError(f"{where}: drops the channel axis")
        if start * size in prefixes:
            last = min(i for i, p in enumerate(prefixes) if p == start * size)
            spanned = [i for i in range(first, last) if shape_out[i] != 1]
            if len(spanned) == 1:
                self._set(out, replace(state, axis=spanned[0]))
                return
            if len(spanned) == 2 and spanned[1] == spanned[0] + 1:
                outer, inner = shape_out[spanned[0]], shape_out[spanned[1]]
                self.trace.divisible.append((state.layout, outer))
                self._set(out, replace(state, axis=spanned[0], split=(outer, inner)))
                return
            raise UnsupportedModelError(f"{where}: splits the channel axis into more than two axes")
        merged = shape_out[first]
        if merged % size or _prod(shape_in[: state.axis + 1]) * (merged // size) not in [
            _prod(shape_in[:i]) for i in range(len(shape_in) + 1)
        ]:
            raise UnsupportedModelError(f"{where}: reshapes the channel axis in a way widths cannot follow")
        self._set(out, replace(state, axis=first, repeat=state.repeat * (merged // size)))

    def _merge_split(
        self, state: Channels, shape_in: list[int], shape_out: list[int], out: torch.Tensor, where: str
    ) -> None:
        a = state.axis
        start = _prod(shape_in[:a])
        width = shape_in[a] * shape_in[a + 1]
        prefixes = [_prod(shape_out[:i]) for i in range(len(shape_out) + 1)]
        if shape_in == shape_out:
            self._set(out, state)
            return
        if start not in prefixes or start * width not in prefixes:
            raise UnsupportedModelError(f"{where}: reshapes channels that are split over two axes")
        first = max(i for i, p in enumerate(prefixes) if p == start)
        if first >= len(shape_out) or shape_out[first] != width:
            raise UnsupportedModelError(f"{where}: reshapes channels that are split over two axes")
        layout = (Shuffled(state.layout),) if state.swapped else state.layout
        self._set(out, Channels(first, layout, state.repeat))

    def _permute(self, name: str, args: tuple, kwargs: dict, out: torch.Tensor, where: str) -> None:
        tensor = args[0]
        state = self._get(tensor)
        if state is None:
            return
        ndim = tensor.dim()
        if name == "permute":
            dims = kwargs["dims"] if len(args) < 2 else args[1:] if isinstance(args[1], int) else args[1]
            order = [d % ndim for d in dims]
        else:
            source = args[1] if len(args) > 1 else kwargs.get("dim0", kwargs.get("source"))
            target = args[2] if len(args) > 2 else kwargs.get("dim1", kwargs.get("destination"))
            order = list(range(ndim))
            if name in ("movedim", "moveaxis"):
                sources, targets = _dims(source, ndim), _dims(target, ndim)
                rest = [d for d in order if d not in sources]
                order = [None] * ndim  # type: ignore[list-item]
                for s, t in zip(sources, targets, strict=True):
                    order[t] = s
                fill = iter(rest)
                order = [d if d is not None else next(fill) for d in order]
            else:
                i, j = source % ndim, target % ndim
                order[i], order[j] = order[j], order[i]
        axis = order.index(state.axis)
        if state.split is None:
            self._set(out, replace(state, axis=axis))
            return
        partner = order.index(state.axis + 1)
        if abs(partner - axis) != 1:
            raise UnsupportedModelError(f"{where}: moves apart channels that are split over two axes")
        swapped = state.swapped != (partner < axis)
        self._set(out, replace(state, axis=min(axis, partner), swapped=swapped))

    def _elementwise(self, args: tuple, kwargs: dict, outputs: list[torch.Tensor], where: str) -> None:
        out = outputs[0]
        operands = _tensors(list(args) + list(kwargs.values()))
        landed: list[tuple[int, Channels]] = []
        for tensor in operands:
            state = self._get(tensor)
            if state is None:
                continue
            axis = self._landing(tensor, state, out, args, kwargs, where)
            if axis is not None:
                landed.append((axis, state))
        if not landed:
            return
        axes = {axis for axis, _ in landed}
        if len(axes) > 1:
            raise UnsupportedModelError(f"{where}: combines tensors with channels on different axes")
        axis = axes.pop()
        first = landed[0][1]
        for _, state in landed[1:]:
            if (state.split, state.swapped) != (first.split, first.swapped) or state.repeat != first.repeat:
                raise UnsupportedModelError(f"{where}: combines channels arranged differently")
            self.unknowns.unify(first.layout, state.layout, where)
        width = int(out.shape[axis])
        for tensor in operands:
            if self._get(tensor) is not None or tensor.dim() == 0:
                continue
            offset = tensor.dim() - out.dim() + axis
            if 0 <= offset < tensor.dim() and tensor.shape[offset] == width and width > 1:
                name = self._params.get(id(tensor)) if isinstance(tensor, nn.Parameter) else None
                if name is not None and first.split is None and first.repeat == 1:
                    self._record((name, "param", offset), first.layout, where)
                else:  # a fixed-size tensor (buffer, constant) meets these channels: they keep its size
                    self.unknowns.fix(first.layout)
        state = replace(first, axis=axis)
        for result in outputs:
            if result.dim() == out.dim() and result.shape[axis] == width:
                self._set(result, state)

    def _landing(
        self, tensor: torch.Tensor, state: Channels, out: torch.Tensor, args: tuple, kwargs: dict, where: str
    ) -> int | None:
        """The output axis a tagged operand's channels land on; None when reduced away or broadcast."""
        size = int(tensor.shape[state.axis])
        if out.dim() >= tensor.dim():
            axis = state.axis + out.dim() - tensor.dim()
            if state.split is not None and tuple(out.shape[axis : axis + 2]) != tuple(
                tensor.shape[state.axis : state.axis + 2]
            ):
                raise UnsupportedModelError(f"{where}: changes channels that are split over two axes")
            if int(out.shape[axis]) == size:
                return axis
            if size == 1:  # broadcast over the other operand's channels: must stay one channel
                self.unknowns.fix(state.layout)
                return None
            if int(out.shape[axis]) == 1 and out.dim() == tensor.dim():
                return None  # reduced, keeping the dim
            raise UnsupportedModelError(
                f"{where}: changes the channel count from {size} to {out.shape[axis]}"
            )
        dims = _dims(kwargs.get("dim", args[1] if len(args) > 1 else None), tensor.dim())
        if out.dim() == 0 or dims is None:
            if out.dim() == 0:
                return None
            raise UnsupportedModelError(f"{where}: drops axes in a way the channel trace cannot follow")
        if state.axis in dims or (state.split is not None and state.axis + 1 in dims):
            return None
        return state.axis - sum(1 for d in dims if d < state.axis)


def trace_channels(model: nn.Module, example: torch.Tensor) -> Trace:
    """Follow channels through the model in eval mode, then in training mode for layers only training runs.

    The training pass (on a copy, batch of two, so batch norms can run) reaches auxiliary heads such as
    GoogLeNet's and Inception's, which must be resized with the layers they read. A model that cannot run
    in training mode on this input keeps the eval pass alone.
    """
    trace = Trace()
    was_training = model.training
    model.eval()
    try:
        eval_pass = ChannelTracer(trace)
        eval_pass.run(model, example)
        layers = {
            path
            for path, m in model.named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear) and any(True for _ in m.parameters(recurse=False))
        }
        if layers - eval_pass.ran:
            copied = copy.deepcopy(model).train()
            try:
                ChannelTracer(trace).run(copied, example.expand(2, *example.shape[1:]).contiguous())
            except (RuntimeError, ValueError) as error:
                if isinstance(error, UnsupportedModelError):
                    raise
    finally:
        model.train(was_training)
    return trace
