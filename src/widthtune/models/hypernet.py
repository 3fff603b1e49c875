"""LW-DNA's hypernetwork: every conv/linear kernel generated from the latent vectors of its channel groups.

One latent vector per channel group (as long as the group's width) is shared by every layer the group
couples, so deleting a latent element deletes that channel everywhere at once. A layer's kernel is
O[i, j] = W2[i, j] . (Z[i, j] W1[i, j]) with Z = z_out z_in^T and per-element W1 (m x 1), W2 (k*k x m), as
in the paper's eq. (7), without biases. Channels outside any group use a fixed latent of ones: the image
input of the stem, the classifier's class outputs, the single input of a depthwise conv (which therefore
follows its one group). BN affines are masked by the nonzero pattern of their group's latent, so a zeroed
latent element removes its channel entirely (conv output, BN shift and every consumer's input).

Initialisation (hyperfan-in, Chang et al. 2020): latents and W1 ~ N(0, 1), so E[Z^2] = 1 and the embedding
has unit variance; W2 ~ N(0, gain / (m * fan_in)) makes the generated kernel's variance gain / fan_in, i.e.
Kaiming fan-in (gain 2 for convs, 1 for linears). BN affines, biases and running statistics are the
carrier model's own (gamma 1, beta 0, mean 0, var 1); the forward pass never updates the running
statistics, so eval mode is BN with those initial statistics. Memory: W2 holds m numbers per kernel
element, so a hypernetwork weighs about m + m / k^2 times its model's conv and linear weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.func import functional_call

from widthtune.models.inherit import channel_cuts, complete_kept, inherit_weights
from widthtune.models.registry import canonical_spec, channel_space, materialize
from widthtune.models.space import ChannelSpace
from widthtune.models.spec import ModelSpec
from widthtune.models.surgery import is_depthwise
from widthtune.models.widths import Widths

BATCH_NORMS = nn.modules.batchnorm._BatchNorm


class HypernetError(ValueError):
    """A model holds a layer the hypernetwork cannot generate; the message names it."""


Layout = tuple[tuple[str | None, int], ...]
"""A layer dimension's channels in order: runs of one group's channels (its name) or of channels no group owns
(None: the image, the classes, a depthwise input), each with its count at the hypernetwork's widths. A
concatenation's consumer has several runs; every other dimension has one."""


def layout_groups(layout: Layout) -> tuple[str, ...]:
    """The groups a layout holds, in channel order."""
    return tuple(name for name, _ in layout if name is not None)


@dataclass(frozen=True)
class HyperLayer:
    """One generated conv/linear: which latents index its output and input rows, and its kernel's shape."""

    path: str
    shape: tuple[int, ...]  # the module's weight shape
    out_layout: Layout
    in_layout: Layout  # a depthwise conv's single input: ((None, 1),)
    in_repeat: int = 1  # a linear reading a flattened C x H x W input sees each channel in_repeat times
    linear: bool = False
    depthwise: bool = False

    @property
    def rows(self) -> int:
        """Output channels (n)."""
        return self.shape[0]

    @property
    def cols(self) -> int:
        """Input positions of the latent matrix (c): input channels, 1 for depthwise."""
        return self.shape[1]

    @property
    def kernel(self) -> int:
        """k*k (1 for linears)."""
        size = 1
        for dim in self.shape[2:]:
            size *= dim
        return size


@dataclass(frozen=True, eq=False)
class Hypernet:
    """A model at `widths` reparameterised by latents and per-element embeddings; run it with `forward`.

    `model` is the carrier: it provides the structure, BN affines and statistics and any bias; its own
    conv/linear weights are never used. `w1[path]` is (m, n, c) and `w2[path]` is (m, n, c, k*k).
    """

    spec: ModelSpec
    space: ChannelSpace
    widths: Widths
    model: nn.Module
    latents: Mapping[str, Tensor]
    layers: tuple[HyperLayer, ...]
    w1: Mapping[str, Tensor]
    w2: Mapping[str, Tensor]
    norms: Mapping[str, Layout]  # BN path -> the latents that mask its channels

    @property
    def m(self) -> int:
        """Embedding size."""
        return next(iter(self.w1.values())).shape[0]

    def _latent(self, layout: Layout, repeat: int = 1) -> Tensor:
        """A dimension's latent: its groups' latents end to end, ones where no group owns the channels."""
        reference = next(iter(self.latents.values()))
        pieces = [
            self.latents[name]
            if name is not None
            else torch.ones(count, dtype=reference.dtype, device=reference.device)
            for name, count in layout
        ]
        latent = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return latent.repeat_interleave(repeat) if repeat > 1 else latent

    def kernel(self, layer: HyperLayer) -> Tensor:
        """The layer's weight: O[i, j] = W2[i, j] . (z_out[i] z_in[j] W1[i, j]), all elementwise."""
        z_out = self._latent(layer.out_layout)
        z_in = self._latent(layer.in_layout, layer.in_repeat)
        grid = z_out[:, None] * z_in[None, :]  # (n, c); no matmul, so slices reproduce it bit for bit
        w1, w2 = self.w1[layer.path], self.w2[layer.path]
        out = (grid * w1[0])[..., None] * w2[0]
        for k in range(1, w1.shape[0]):  # a fixed-order sum over the embedding, exact under slicing
            out = out + (grid * w1[k])[..., None] * w2[k]
        return out.reshape(layer.shape)

    def kernels(self) -> dict[str, Tensor]:
        """Every generated conv/linear weight by module path."""
        return {layer.path: self.kernel(layer) for layer in self.layers}

    def mask(self, layout: Layout) -> Tensor | None:
        """1 where the layout's latents are nonzero (None if no group owns it): what BN affines are masked by."""
        if not layout_groups(layout):
            return None
        latent = self._latent(layout).detach()
        return (latent != 0).to(latent.dtype)

    def generated(self) -> dict[str, Tensor]:
        """The tensors that replace the carrier's parameters: generated kernels and masked BN affines."""
        tensors = {f"{path}.weight": weight for path, weight in self.kernels().items()}
        modules = dict(self.model.named_modules())
        for path, layout in self.norms.items():
            mask = self.mask(layout)
            norm = modules[path]
            for name in ("weight", "bias"):
                param = getattr(norm, name, None)
                if param is not None and mask is not None:
                    tensors[f"{path}.{name}"] = param * mask
        return tensors

    def forward(self, x: Tensor) -> Tensor:
        """Run the carrier with generated weights (its train/eval mode; running statistics never change)."""
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        return functional_call(self.model, {**self.generated(), **buffers}, (x,), strict=False)

    __call__ = forward

    def state_dict(self) -> dict[str, Tensor]:
        """A detached state dict for `materialize(spec, widths)`: generated weights, the carrier's rest."""
        state = {name: t.detach().clone() for name, t in self.model.state_dict().items()}
        with torch.no_grad():
            for name, tensor in self.generated().items():
                state[name] = tensor.detach().clone()
        return state

    def to(self, device: torch.device | str) -> Hypernet:
        """The same hypernetwork on `device` (the carrier moves in place; latents stay leaves with grad)."""
        self.model.to(device)
        return replace(
            self,
            latents={k: z.detach().to(device).requires_grad_() for k, z in self.latents.items()},
            w1={k: w.to(device) for k, w in self.w1.items()},
            w2={k: w.to(device) for k, w in self.w2.items()},
        )

    def train(self, mode: bool = True) -> Hypernet:
        """Put the carrier in train (batch-statistics BN, dropout) or eval mode; returns self for chaining."""
        self.model.train(mode)
        return self

    def eval(self) -> Hypernet:
        """Eval mode: BN with the carrier's running statistics, no dropout."""
        return self.train(False)


def _layers(model: nn.Module, space: ChannelSpace, widths: Widths) -> tuple[tuple[HyperLayer, ...], dict]:
    """Read every conv/linear's latent layouts and every BN's masking layout off the channel space."""
    for group in space:
        for member in group.members:
            if member.kind == "param":
                raise HypernetError(
                    f"group {group.name!r} owns raw parameter {member.path!r}; "
                    "the hypernetwork generates conv and linear kernels only"
                )
    layouts: dict[tuple[str, str], Layout] = {
        key: tuple(
            (None, count) if group is None else (space.groups[group].name, widths[space.groups[group].name])
            for group, count in parts
        )
        for key, parts in space.layouts().items()
    }

    def layout(path: str, kind: str, size: int) -> Layout:
        return layouts.get((path, kind), ((None, size),))

    layers, norms = [], {}
    for path, module in model.named_modules():
        owned = (path, "out") in layouts or (path, "in") in layouts
        if isinstance(module, nn.Conv2d):
            rows, cols = module.weight.shape[:2]
            if is_depthwise(module):
                out = layouts.get((path, "out")) or layout(path, "in", rows)
                layers.append(HyperLayer(path, tuple(module.weight.shape), out, ((None, 1),), depthwise=True))
                continue
            if module.groups != 1:
                raise HypernetError(f"{path}: grouped conv ({module.groups} groups) cannot be generated")
            layers.append(
                HyperLayer(
                    path, tuple(module.weight.shape), layout(path, "out", rows), layout(path, "in", cols)
                )
            )
        elif isinstance(module, nn.Linear):
            inputs = layout(path, "in", module.in_features)
            repeat = module.in_features // sum(count for _, count in inputs)
            layers.append(
                HyperLayer(
                    path,
                    tuple(module.weight.shape),
                    layout(path, "out", module.out_features),
                    inputs,
                    repeat,
                    linear=True,
                )
            )
        elif isinstance(module, BATCH_NORMS):
            norms[path] = layouts.get((path, "out")) or layout(path, "in", module.num_features)
        elif owned and any(True for _ in module.parameters(recurse=False)):
            raise HypernetError(f"{path}: {type(module).__name__} in a channel group cannot be generated")
    return tuple(layers), norms


def reparameterize(
    spec: ModelSpec | str, widths: Widths | Mapping[str, int] | None = None, *, m: int = 8, seed: int = 0
) -> Hypernet:
    """The model a spec names at `widths` (the base when None), with hyperfan-in initialised hypernetworks."""
    if not isinstance(m, int) or m < 1:
        raise HypernetError(f"embedding size m must be a positive integer, got {m!r}")
    spec = canonical_spec(spec)
    space = channel_space(spec)
    widths = Widths.coerce(space, widths)
    model = materialize(spec, widths, seed=seed)
    layers, norms = _layers(model, space, widths)
    generator = torch.Generator().manual_seed(seed)
    latents = {
        group.name: torch.randn(widths[group.name], generator=generator).requires_grad_() for group in space
    }
    w1, w2 = {}, {}
    for layer in layers:
        gain = 1.0 if layer.linear else 2.0
        fan_in = layer.cols * layer.kernel
        std = (gain / (m * fan_in)) ** 0.5
        w1[layer.path] = torch.randn(m, layer.rows, layer.cols, generator=generator)
        w2[layer.path] = torch.randn(m, layer.rows, layer.cols, layer.kernel, generator=generator) * std
    return Hypernet(spec, space, widths, model, latents, layers, w1, w2, norms)


def _take(tensor: Tensor, dim: int, index: Tensor | None) -> Tensor:
    return tensor if index is None else tensor.index_select(dim, index.to(tensor.device))


def shrink(hypernet: Hypernet, keep: Mapping[str, Sequence[int]]) -> Hypernet:
    """The hypernetwork restricted to the kept channels (by group; unlisted groups keep all), same values.

    Kept indices are sorted, so channel order is preserved; the shrunk kernels equal the corresponding
    slices of the widened kernels exactly. The cuts are weight inheritance's over the space at the
    hypernetwork's widths, so a concatenated input keeps each group's kept channels at that group's offset,
    and the carrier's BN affines, statistics, biases and channel selections are cut as `inherit_weights` cuts.
    """
    space = hypernet.space.rebased(hypernet.widths)
    try:
        full = complete_kept(space, keep)
        widths = Widths.from_mapping(hypernet.space, {name: len(full[name]) for name in space.names})
        cuts = channel_cuts(hypernet.model, space, full)
        carried = inherit_weights(hypernet.model, space, full)
    except ValueError as error:
        raise HypernetError(f"shrink: {error}") from None
    device = next(iter(hypernet.latents.values())).device
    model = materialize(hypernet.spec, widths).to(device)
    model.load_state_dict(carried)  # the generated kernels' slots too, though the kernels replace them
    layers, norms = _layers(model, hypernet.space, widths)
    latents = {
        name: z.detach()
        .index_select(0, torch.as_tensor(full[name], device=z.device))
        .clone()
        .requires_grad_()
        for name, z in hypernet.latents.items()
    }
    w1, w2 = {}, {}
    for layer in layers:
        dims = cuts.get(f"{layer.path}.weight", {})
        rows, cols = dims.get(0), None if layer.depthwise else dims.get(1)
        w1[layer.path] = _take(_take(hypernet.w1[layer.path], 1, rows), 2, cols).clone()
        w2[layer.path] = _take(_take(hypernet.w2[layer.path], 1, rows), 2, cols).clone()
    return Hypernet(hypernet.spec, hypernet.space, widths, model, latents, layers, w1, w2, norms)
