"""Channel layouts read off Torch-Pruning's traced graph: which width unknowns each layer dimension holds, in order.

Torch-Pruning's `DependencyGraph` traces a model through autograd -- one node per layer and per op between
layers, each with its `grad_fn` -- and this module walks that graph from the input. Every conv and linear
output is a fresh unknown (its channel count); between layers:

- adds, multiplies and other elementwise ops equate their operands' layouts (residual streams, SE gates);
- a concatenation on the channel axis lays its inputs' layouts end to end, so a consumer sees them in order;
- a split into equal pieces (`chunk`, ShuffleNet's channel split) ties them (one unknown for all); a split
  with declared sizes, a slice with literal bounds and `unbind` pin the pieces at their traced size;
- views, flattens and permutes move the channel axis; splitting it into (g, C/g), transposing and merging
  it back (a channel shuffle) keeps the widths but permutes the channels, so the block is marked shuffled.

Equating two layouts aligns them by their traced sizes and splits an unknown where the other side has a
boundary, so a conv output added to a concatenation becomes that concatenation. What reaches the model's
outputs is pinned (the classes). The graph is traced in training mode (on a copy), so auxiliary heads such as
GoogLeNet's and Inception's are resized with the layers they read. Torch-Pruning's own index mappings are not
built: they are what this walk replaces, and in 1.6.1 they fail on channel shuffles and cannot tell a chunk
from a split. Anything the walk cannot follow raises `UnsupportedModelError` naming the layer and the op.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections import deque
from dataclasses import dataclass, field, replace

import torch
import torch_pruning as tp
from torch import nn

from widthtune.models.unknowns import Layout, Part, Shuffled, Unknowns, UnsupportedModelError

__all__ = ["MemberKey", "Trace", "UnsupportedModelError", "trace_channels"]

MemberKey = tuple[str, str, int]  # (module or parameter path, "out" | "in" | "param", dim)
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
LAYERS = (
    nn.Conv2d,
    nn.Linear,
    *NORMS,
)  # what resizes; the ops inside one (e.g. LayerNorm2d's permutes) are its own
# autograd ops that mix channels with weights no Conv2d or Linear module owns
MIXING = {
    "Mm", "Bmm", "Addmm", "Baddbmm", "Addbmm", "Matmul", "Convolution", "ConvolutionBackwardBackward",
    "Embedding", "NativeLayerNorm", "NativeBatchNorm", "NativeGroupNorm", "CudnnBatchNorm",
    "MiopenBatchNorm", "IndexSelect", "Gather", "Index", "Take", "ScaledDotProductEfficientAttention",
    "ScaledDotProductFlashAttention", "ScaledDotProductAttentionMath", "PreluKernel", "Dot", "Mv",
}  # fmt: skip
RESHAPES = {
    "View", "Reshape", "ReshapeAlias", "UnsafeView", "Squeeze", "Unsqueeze", "Flatten", "Unflatten", "AsStrided",
}  # fmt: skip


@dataclass(frozen=True)
class Channels:
    """Where a tensor's channels are: the axis, their layout, and how a view may have reshaped that axis."""

    axis: int
    layout: Layout
    repeat: int = 1  # after a flatten, each channel spans this many consecutive positions
    split: tuple[int, int] | None = None  # the axis is split over (axis, axis + 1) with these sizes
    swapped: bool = False  # ... and those two axes are transposed


@dataclass(frozen=True)
class _Param:
    """A raw parameter (e.g. a layer scale) entering an op: its path and shape."""

    path: str
    shape: tuple[int, ...]


@dataclass
class Trace:
    """What the walk found: each layer dimension's layout, and the divisibility groups need."""

    unknowns: Unknowns = field(default_factory=Unknowns)
    members: dict[MemberKey, Layout] = field(default_factory=dict)
    divisible: list[tuple[Layout, int]] = field(default_factory=list)


class _TracedGraph(tp.DependencyGraph):
    """Torch-Pruning's traced computational graph alone, without the dependency rules built on top of it."""

    def trace(self, model: nn.Module, example: torch.Tensor, training: bool) -> dict:
        self.verbose = False
        self.model = model
        self._module2name = {module: name for name, module in model.named_modules()}
        self.ignored_params = []
        self._param_to_name, self.unwrapped_parameters = self._detect_unwrapped_parameters(None)

        def forward(module: nn.Module, inputs: torch.Tensor) -> object:
            return module.train(training)(inputs)  # Torch-Pruning sets eval mode before it calls this

        def reads(module: nn.Module, inputs: tuple) -> None:
            if inputs and isinstance(inputs[0], torch.Tensor):
                self.layer_inputs.setdefault(module, (inputs[0].grad_fn, inputs[0].output_nr))

        self.layer_inputs: dict[nn.Module, tuple[object, int]] = {}
        hooks = [m.register_forward_pre_hook(reads) for m in model.modules() if isinstance(m, LAYERS)]
        try:
            with torch.enable_grad():
                return self._trace(model, example, forward, output_transform=None)
        finally:
            for hook in hooks:
                hook.remove()


def _op(node: object) -> str:
    """An autograd node's op, e.g. `Cat` for `CatBackward0`."""
    return re.sub(r"Backward\d*$", "", node.grad_fn.name()) if node.grad_fn is not None else ""


def _shape(node: object, output: int) -> tuple[int, ...]:
    return tuple(int(s) for s in node.grad_fn._input_metadata[output].shape)


def _prod(values) -> int:
    return math.prod(int(v) for v in values)


class _Walk:
    """Follows channel layouts over the graph's nodes in data-flow order; results land in a `Trace`."""

    def __init__(
        self, model: nn.Module, graph: dict, layer_inputs: dict[nn.Module, tuple[object, int]], trace: Trace
    ) -> None:
        self.trace = trace
        self.layer_inputs = layer_inputs
        self.unknowns = trace.unknowns
        self.paths = {module: path for path, module in model.named_modules()}
        self.params = {id(p): name for name, p in model.named_parameters()}
        self.graph = graph
        self.by_fn = {node.grad_fn: node for node in graph.values() if node.grad_fn is not None}
        self.states: dict[tuple[int, int], Channels | _Param | None] = {}
        self.last_layer: dict[int, str] = {}

    # --- the walk ------------------------------------------------------------------------------------------
    def inputs(self, node: object) -> list[tuple[object, int]]:
        """The nodes (and which of their outputs) this node reads, in argument order.

        A layer reads the tensor its forward was called with; the ops its own forward runs are skipped.
        """
        if isinstance(node.module, LAYERS) and node.module in self.layer_inputs:
            fn, output = self.layer_inputs[node.module]
            source = self.by_fn.get(fn)
            return [] if source is None or source is node else [(source, output)]
        edges = []
        for fn, output in getattr(node.grad_fn, "next_functions", ()):
            source = self.by_fn.get(fn)
            if source is not None and isinstance(source.module, nn.Parameter):
                edges.append((_Leaf(source.module, self.params.get(id(source.module), "")), 0))
            elif source is not None and source is not node:
                edges.append((source, output))
            elif fn is not None and "AccumulateGrad" in fn.name() and id(fn.variable) in self.params:
                edges.append((_Leaf(fn.variable, self.params[id(fn.variable)]), 0))
        return edges

    def run(self) -> None:
        self.inside = self.inside_layers()
        nodes = list(self.graph.values())
        edges = {id(node): self.inputs(node) for node in nodes}
        waiting = {id(n): len({id(s) for s, _ in edges[id(n)] if not isinstance(s, _Leaf)}) for n in nodes}
        readers: dict[int, list[object]] = {}
        for node in nodes:
            for source in {id(s): s for s, _ in edges[id(node)] if not isinstance(s, _Leaf)}.values():
                readers.setdefault(id(source), []).append(node)
        ready = deque(node for node in nodes if waiting[id(node)] == 0)
        done = 0
        while ready:
            node = ready.popleft()
            self.visit(node, edges[id(node)])
            done += 1
            for reader in readers.get(id(node), ()):
                waiting[id(reader)] -= 1
                if waiting[id(reader)] == 0:
                    ready.append(reader)
        if done != len(nodes):
            stuck = next(n for n in nodes if waiting[id(n)] > 0)
            raise UnsupportedModelError(
                f"{self.where(stuck)}: runs more than once in one forward pass (a reused layer), so it has "
                "no single width"
            )
        sinks = {id(node) for node in nodes if id(node) not in readers}
        for (key, _), state in self.states.items():  # what reaches the outputs keeps its size (the classes)
            if key in sinks and isinstance(state, Channels):
                self.unknowns.fix(state.layout)

    def where(self, node: object) -> str:
        module = node.module
        if isinstance(module, nn.Module) and module in self.paths:
            return f"layer {self.paths[module]!r}"
        after = self.last_layer.get(id(node))
        return f"op {_op(node)}" + (f" after layer {after!r}" if after else " in the model's forward")

    def state(self, source: object, output: int) -> Channels | _Param | None:
        if isinstance(source, _Leaf):
            return _Param(source.path, tuple(source.variable.shape))
        return self.states.get((id(source), output))

    def set(self, node: object, output: int, state: Channels | None) -> None:
        self.states[(id(node), output)] = state

    def inside_layers(self) -> set[int]:
        """The nodes of ops a layer's own forward runs between its input and its output."""
        inside: set[int] = set()
        for module, (start, _) in self.layer_inputs.items():
            node = self.graph.get(module)
            if node is None:
                continue
            stack = [fn for fn, _ in getattr(node.grad_fn, "next_functions", ()) if fn is not None]
            while stack:
                fn = stack.pop()
                inner = self.by_fn.get(fn)
                if fn is start or inner is None or id(inner) in inside or isinstance(inner.module, LAYERS):
                    continue
                inside.add(id(inner))
                stack.extend(f for f, _ in getattr(fn, "next_functions", ()) if f is not None)
        return inside

    def visit(self, node: object, edges: list[tuple[object, int]]) -> None:
        for source, _ in edges:
            if not isinstance(source, _Leaf) and id(source) in self.last_layer:
                self.last_layer[id(node)] = self.last_layer[id(source)]
        module = node.module
        if isinstance(module, nn.Parameter) or id(node) in self.inside:
            for output in range(len(node.grad_fn._input_metadata)):
                self.set(node, output, None)
            return
        try:
            if isinstance(module, nn.Module) and module in self.paths:
                self.last_layer[id(node)] = self.paths[module]
                self.layer(node, module, self.paths[module], edges)
            else:
                self.op(node, edges)
        except UnsupportedModelError:
            raise
        except Exception as error:  # a case the rules below did not foresee: say where, not how
            raise UnsupportedModelError(
                f"{self.where(node)}: cannot follow channels ({type(error).__name__}: {_first_line(error)})"
            ) from None

    # --- layers ----------------------------------------------------------------------------------------------
    def layer(self, node: object, module: nn.Module, path: str, edges: list[tuple[object, int]]) -> None:
        kind = type(module).__name__
        data = [(s, o) for s, o in edges if isinstance(self.state(s, o), Channels)]
        if len(data) > 1:
            raise UnsupportedModelError(f"layer {path!r} ({kind}): reads channels from more than one tensor")
        out_shape = _shape(node, 0)
        if data:
            state = self.state(*data[0])
            in_shape = _shape(*data[0])
        else:  # reads the model's input, or a tensor made without the graph: its channels are what it holds
            axis = len(out_shape) - 1 if isinstance(module, nn.Linear | nn.LayerNorm) else 1
            channels = _in_channels(module, out_shape[axis])
            state = Channels(axis, (self.unknowns.new(channels, fixed=True),))
            in_shape = None
        if not isinstance(module, (nn.Conv2d, nn.Linear, *NORMS)):
            raise UnsupportedModelError(
                f"layer {path!r} ({kind}): only Conv2d, Linear and norm layers can follow a width"
            )
        if state.split is not None:
            raise UnsupportedModelError(f"layer {path!r} ({kind}): reads channels split over two axes")
        if isinstance(module, nn.Linear):
            if in_shape is not None and state.axis != len(in_shape) - 1:
                raise UnsupportedModelError(f"layer {path!r} (Linear): its last axis is not the channel axis")
            self.record((path, "in", 0), state.layout, f"layer {path!r}")
            self.set(node, 0, Channels(len(out_shape) - 1, self.writer(path, module.out_features)))
            return
        if state.repeat != 1:
            raise UnsupportedModelError(f"layer {path!r} ({kind}): reads flattened channels")
        if isinstance(module, nn.Conv2d):
            if state.axis != 1:
                raise UnsupportedModelError(f"layer {path!r} (Conv2d): axis 1 is not the channel axis")
            if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
                out = self.record((path, "out", 0), state.layout, f"layer {path!r}")
            else:
                if module.groups > 1 and module.groups == module.in_channels:
                    raise UnsupportedModelError(
                        f"layer {path!r} (Conv2d): a depthwise conv with a channel multiplier "
                        f"({module.in_channels} -> {module.out_channels}) cannot follow its input's width"
                    )
                self.record((path, "in", 0), state.layout, f"layer {path!r}")
                out = self.writer(path, module.out_channels)
                if module.groups > 1:
                    self.trace.divisible += [(state.layout, module.groups), (out, module.groups)]
            self.set(node, 0, Channels(1, out))
            return
        if isinstance(module, nn.LayerNorm) and (
            len(module.normalized_shape) != 1
            or out_shape[state.axis] != module.normalized_shape[0]
            or (type(module) is nn.LayerNorm and state.axis != len(out_shape) - 1)  # subclasses may permute
        ):
            raise UnsupportedModelError(f"layer {path!r} ({kind}): normalises other axes than the channels")
        if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.GroupNorm) and state.axis != 1:
            raise UnsupportedModelError(f"layer {path!r} ({kind}): axis 1 is not the channel axis")
        layout = self.record((path, "out", 0), state.layout, f"layer {path!r}")
        if isinstance(module, nn.GroupNorm):
            self.trace.divisible.append((layout, module.num_groups))
        self.set(node, 0, replace(state, layout=layout))

    def writer(self, path: str, channels: int) -> Layout:
        key = (path, "out", 0)
        if key not in self.trace.members:
            self.trace.members[key] = (self.unknowns.new(channels),)
        return self.trace.members[key]

    def record(self, key: MemberKey, layout: Layout, where: str) -> Layout:
        previous = self.trace.members.get(key)
        if previous is None:
            self.trace.members[key] = layout
            return layout
        self.unknowns.unify(previous, layout, where)
        return previous

    # --- ops between layers ------------------------------------------------------------------------------
    def op(self, node: object, edges: list[tuple[object, int]]) -> None:
        name = _op(node)
        known = [(s, o) for s, o in edges if isinstance(self.state(s, o), Channels)]
        outputs = len(node.grad_fn._input_metadata)
        if not known:
            for output in range(outputs):
                self.set(node, output, None)
            return
        where = self.where(node)
        if name in MIXING:
            raise UnsupportedModelError(
                f"{where}: mixes channels outside a Conv2d or Linear layer, so no width can follow them"
            )
        fn = node.grad_fn
        if name == "Cat":
            self.cat(node, edges, fn._saved_dim, where)
        elif name in ("Split", "SplitWithSizes", "Unbind"):
            self.split(node, name, known[0], where)
        elif name == "Slice":
            self.slice(node, known[0], fn, where)
        elif name == "Select":
            self.select(node, known[0], fn)
        elif name in RESHAPES:
            self.reshape(node, known[0], where)
        elif name in ("Transpose", "T", "Permute"):
            self.permute(node, name, known[0], where)
        else:
            self.elementwise(node, edges, where)

    def cat(self, node: object, edges: list[tuple[object, int]], dim: int, where: str) -> None:
        out_shape = _shape(node, 0)
        dim %= len(out_shape)
        states = [self.state(s, o) for s, o in edges]
        known = [s for s in states if isinstance(s, Channels)]
        if any(s.split is not None for s in known):
            raise UnsupportedModelError(f"{where}: concatenates channels split over two axes")
        axes = {s.axis for s in known}
        if len(axes) > 1:
            raise UnsupportedModelError(f"{where}: concatenates tensors with channels on different axes")
        axis = axes.pop()
        if dim != axis:  # stacking along another axis (tokens): the channels of all inputs are one
            self.elementwise(node, edges, where)
            return
        repeats = {s.repeat for s in known}
        if len(repeats) > 1:
            raise UnsupportedModelError(f"{where}: concatenates channels flattened with different sizes")
        repeat = repeats.pop()
        layout: list[Part] = []
        for (source, output), state in zip(edges, states, strict=True):
            if isinstance(state, Channels):
                layout.extend(state.layout)
            else:
                layout.append(self.unknowns.new(_shape(source, output)[dim] // repeat, fixed=True))
        missing = out_shape[dim] // repeat - self.unknowns.total(tuple(layout))
        if missing:  # inputs made without the graph (constants) take the rest
            layout.append(self.unknowns.new(missing, fixed=True))
        self.set(node, 0, Channels(axis, tuple(layout), repeat))

    def split(self, node: object, name: str, edge: tuple[object, int], where: str) -> None:
        state = self.state(*edge)
        in_shape = _shape(*edge)
        fn = node.grad_fn
        outputs = [_shape(node, i) for i in range(len(fn._input_metadata))]
        dim = fn._saved_dim % len(in_shape)
        if state.split is not None and dim in (state.axis, state.axis + 1):
            raise UnsupportedModelError(f"{where}: splits channels that are split over two axes")
        if dim != state.axis:
            moved = state.axis - (1 if name == "Unbind" and dim < state.axis else 0)
            for i in range(len(outputs)):
                self.set(node, i, replace(state, axis=moved))
            return
        if name == "Unbind":
            self.unknowns.fix(state.layout)
            for i in range(len(outputs)):
                self.set(node, i, None)
            return
        sizes = [shape[dim] // state.repeat for shape in outputs]
        layout = state.layout
        shuffled = len(layout) == 1 and isinstance(layout[0], Shuffled)
        if name == "Split" and len(set(sizes)) == 1:  # equal pieces (chunk): they follow the tensor's width
            inner = layout[0].parts if shuffled else layout
            pieces = self.unknowns.cut(inner, sizes, where)
            for piece in pieces[1:]:
                self.unknowns.unify(pieces[0], piece, where)
            if shuffled:
                pieces = [(Shuffled(piece),) for piece in pieces]
        else:  # declared sizes stay what the model's code says
            pieces = self.unknowns.cut(layout, sizes, where)
            for piece in pieces:
                self.unknowns.fix(piece)
        for i, piece in enumerate(pieces):
            self.set(node, i, replace(state, layout=piece))

    def slice(self, node: object, edge: tuple[object, int], fn: object, where: str) -> None:
        state = self.state(*edge)
        in_shape = _shape(*edge)
        dim = fn._saved_dim % len(in_shape)
        if dim != state.axis and not (state.split is not None and dim == state.axis + 1):
            self.set(node, 0, state)
            return
        size = in_shape[dim]
        start, stop, step = slice(fn._saved_start, fn._saved_end, fn._saved_step).indices(size)
        if start == 0 and stop == size and step == 1:
            self.set(node, 0, state)
            return
        if state.split is not None:
            raise UnsupportedModelError(f"{where}: slices channels split over two axes")
        if state.repeat != 1:
            self.unknowns.fix(state.layout)
            self.set(node, 0, None)
            return
        if step != 1:
            raise UnsupportedModelError(f"{where}: takes every {step}th channel")
        before, taken, _ = self.unknowns.cut(state.layout, [start, stop - start, size - stop], where)
        self.unknowns.fix(before)
        if stop < size:
            self.unknowns.fix(taken)  # a literal end: the slice keeps its size whatever the width
        self.set(node, 0, Channels(state.axis, taken))

    def select(self, node: object, edge: tuple[object, int], fn: object) -> None:
        state = self.state(*edge)
        dim = fn._saved_dim % len(_shape(*edge))
        if dim == state.axis or (state.split is not None and dim == state.axis + 1):
            self.unknowns.fix(state.layout)  # one channel picked by its index
            self.set(node, 0, None)
            return
        self.set(node, 0, replace(state, axis=state.axis - (1 if dim < state.axis else 0)))

    def reshape(self, node: object, edge: tuple[object, int], where: str) -> None:
        state = self.state(*edge)
        shape_in, shape_out = list(_shape(*edge)), list(_shape(node, 0))
        if _prod(shape_in) != _prod(shape_out):
            raise UnsupportedModelError(f"{where}: views {_prod(shape_out)} of {_prod(shape_in)} elements")
        if shape_in[state.axis] == 1:  # a one-channel axis cannot be told from a broadcast one: keep it one
            self.unknowns.fix(state.layout)
            self.set(node, 0, None)
            return
        if state.split is not None:
            self.merge_split(node, state, shape_in, shape_out, where)
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
                self.set(node, 0, replace(state, axis=spanned[0]))
                return
            if len(spanned) == 2 and spanned[1] == spanned[0] + 1:
                outer, inner = shape_out[spanned[0]], shape_out[spanned[1]]
                self.trace.divisible.append((state.layout, outer))
                self.set(node, 0, replace(state, axis=spanned[0], split=(outer, inner)))
                return
            raise UnsupportedModelError(f"{where}: splits the channel axis into more than two axes")
        merged = shape_out[first]
        if merged % size or _prod(shape_in[: state.axis + 1]) * (merged // size) not in [
            _prod(shape_in[:i]) for i in range(len(shape_in) + 1)
        ]:
            raise UnsupportedModelError(f"{where}: reshapes the channel axis in a way widths cannot follow")
        self.set(node, 0, replace(state, axis=first, repeat=state.repeat * (merged // size)))

    def merge_split(
        self, node: object, state: Channels, shape_in: list[int], shape_out: list[int], where: str
    ) -> None:
        a = state.axis
        start = _prod(shape_in[:a])
        width = shape_in[a] * shape_in[a + 1]
        prefixes = [_prod(shape_out[:i]) for i in range(len(shape_out) + 1)]
        if shape_in == shape_out:
            self.set(node, 0, state)
            return
        if start not in prefixes or start * width not in prefixes:
            raise UnsupportedModelError(f"{where}: reshapes channels that are split over two axes")
        first = max(i for i, p in enumerate(prefixes) if p == start)
        if first >= len(shape_out) or shape_out[first] != width:
            raise UnsupportedModelError(f"{where}: reshapes channels that are split over two axes")
        layout = (Shuffled(state.layout),) if state.swapped else state.layout
        self.set(node, 0, Channels(first, layout, state.repeat))

    def permute(self, node: object, name: str, edge: tuple[object, int], where: str) -> None:
        state = self.state(*edge)
        ndim = len(_shape(*edge))
        order = list(range(ndim))
        if name == "Permute":
            order = [d % ndim for d in node.grad_fn._saved_dims]
        elif name == "T":
            order = order[::-1]
        else:
            i, j = node.grad_fn._saved_dim0 % ndim, node.grad_fn._saved_dim1 % ndim
            order[i], order[j] = order[j], order[i]
        axis = order.index(state.axis)
        if state.split is None:
            self.set(node, 0, replace(state, axis=axis))
            return
        partner = order.index(state.axis + 1)
        if abs(partner - axis) != 1:
            raise UnsupportedModelError(f"{where}: moves apart channels that are split over two axes")
        swapped = state.swapped != (partner < axis)
        self.set(node, 0, replace(state, axis=min(axis, partner), swapped=swapped))

    def elementwise(self, node: object, edges: list[tuple[object, int]], where: str) -> None:
        out_shape = _shape(node, 0)
        landed: list[tuple[int, Channels]] = []
        for source, output in edges:
            state = self.state(source, output)
            if isinstance(state, Channels):
                axis = self.landing(node, _shape(source, output), state, out_shape, where)
                if axis is not None:
                    landed.append((axis, state))
        outputs = len(node.grad_fn._input_metadata)
        if not landed:
            for i in range(outputs):
                self.set(node, i, None)
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
        width = out_shape[axis]
        for source, output in edges:
            param = self.state(source, output)
            if not isinstance(param, _Param) or not param.shape:
                continue
            offset = len(param.shape) - len(out_shape) + axis
            if 0 <= offset < len(param.shape) and param.shape[offset] == width and width > 1:
                if first.split is None and first.repeat == 1:
                    self.record((param.path, "param", offset), first.layout, where)
                else:
                    self.unknowns.fix(first.layout)
        state = replace(first, axis=axis)
        for i in range(outputs):
            shape = _shape(node, i)
            self.set(node, i, state if len(shape) == len(out_shape) and shape[axis] == width else None)

    def landing(
        self, node: object, shape: tuple[int, ...], state: Channels, out: tuple[int, ...], where: str
    ) -> int | None:
        """The output axis an operand's channels land on; None when reduced away or broadcast."""
        size = shape[state.axis]
        if len(out) >= len(shape):
            axis = state.axis + len(out) - len(shape)
            if state.split is not None and tuple(out[axis : axis + 2]) != tuple(
                shape[state.axis : state.axis + 2]
            ):
                raise UnsupportedModelError(f"{where}: changes channels that are split over two axes")
            if out[axis] == size:
                return axis
            if size == 1:  # broadcast over the other operand's channels: must stay one channel
                self.unknowns.fix(state.layout)
                return None
            if out[axis] == 1 and len(out) == len(shape):
                return None  # reduced, keeping the dim
            raise UnsupportedModelError(f"{where}: changes the channel count from {size} to {out[axis]}")
        if not out:
            return None
        dims = getattr(node.grad_fn, "_saved_dim", None)
        if isinstance(dims, int):
            dims = (dims,)
        if not isinstance(dims, tuple | list):
            raise UnsupportedModelError(f"{where}: drops axes in a way the channel trace cannot follow")
        dims = [d % len(shape) for d in dims]
        if state.axis in dims or (state.split is not None and state.axis + 1 in dims):
            return None
        return state.axis - sum(1 for d in dims if d < state.axis)


@dataclass(frozen=True)
class _Leaf:
    """A model parameter an op reads directly (not through a layer)."""

    variable: nn.Parameter = field(compare=False)
    path: str = ""


def _in_channels(module: nn.Module, fallback: int) -> int:
    if isinstance(module, nn.Conv2d):
        return module.in_channels
    if isinstance(module, nn.Linear):
        return module.in_features
    return fallback


def trace_channels(model: nn.Module, example: torch.Tensor) -> Trace:
    """Walk Torch-Pruning's graph of a copy of the model, traced in training mode (else in eval mode).

    Training mode (a batch of two, so batch norms can run) reaches auxiliary heads such as GoogLeNet's and
    Inception's; a model that cannot run in training mode on this input is traced in eval mode.
    """
    copied = copy.deepcopy(model)
    batch = example.expand(2, *example.shape[1:]).contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = _TracedGraph()
        try:
            graph.module2node = graph.trace(copied, batch, training=True)
        except (RuntimeError, ValueError):
            copied = copy.deepcopy(model)
            graph = _TracedGraph()
            try:
                graph.module2node = graph.trace(copied, batch, training=False)
            except RuntimeError:  # the model does not run on this input: the caller says so
                raise
            except Exception as error:  # Torch-Pruning's trace of a forward it cannot follow
                raise UnsupportedModelError(
                    f"its forward pass cannot be traced ({type(error).__name__}: {_first_line(error)})"
                ) from None
    trace = Trace()
    _Walk(copied, graph.module2node, graph.layer_inputs, trace).run()
    return trace


def _first_line(error: BaseException) -> str:
    """An error's message on one line (the walk's errors are one line each)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
