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

from widthtune.models.registry import canonical_spec, channel_space, materialize
from widthtune.models.space import ChannelSpace
from widthtune.models.spec import ModelSpec
from widthtune.models.surgery import is_depthwise
from widthtune.models.widths import Widths

BATCH_NORMS = nn.modules.batchnorm._BatchNorm


class HypernetError(ValueError):
    """A model holds a layer the hypernetwork cannot generate; the message names it."""


@dataclass(frozen=True)
class HyperLayer:
    """One generated conv/linear: which latents index its output and input rows, and its kernel's shape."""

    path: str
    shape: tuple[int, ...]  # the module's weight shape
    out_group: str | None  # None: a fixed latent of ones (e.g. the classes)
    in_group: str | None  # None: a fixed latent of ones (e.g. the image's channels, a depthwise input)
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
    norms: Mapping[str, str | None]  # BN path -> the group whose latent masks it

    @property
    def m(self) -> int:
        """Embedding size."""
        return next(iter(self.w1.values())).shape[0]

    def _latent(self, group: str | None, length: int, repeat: int = 1) -> Tensor:
        if group is None:
            reference = next(iter(self.latents.values()))
            return torch.ones(length, dtype=reference.dtype, device=reference.device)
        latent = self.latents[group]
        return latent.repeat_interleave(repeat) if repeat > 1 else latent

    def kernel(self, layer: HyperLayer) -> Tensor:
        """The layer's weight: O[i, j] = W2[i, j] . (z_out[i] z_in[j] W1[i, j]), all elementwise."""
        z_out = self._latent(layer.out_group, layer.rows)
        z_in = self._latent(layer.in_group, layer.cols, layer.in_repeat)
        grid = z_out[:, None] * z_in[None, :]  # (n, c); no matmul, so slices reproduce it bit for bit
        w1, w2 = self.w1[layer.path], self.w2[layer.path]
        out = (grid * w1[0])[..., None] * w2[0]
        for k in range(1, w1.shape[0]):  # a fixed-order sum over the embedding, exact under slicing
            out = out + (grid * w1[k])[..., None] * w2[k]
        return out.reshape(layer.shape)

    def kernels(self) -> dict[str, Tensor]:
        """Every generated conv/linear weight by module path."""
        return {layer.path: self.kernel(layer) for layer in self.layers}

    def mask(self, group: str | None) -> Tensor | None:
        """1 where the group's latent is nonzero (None if ungrouped): what BN affines are masked by."""
        if group is None:
            return None
        latent = self.latents[group].detach()
        return (latent != 0).to(latent.dtype)

    def generated(self) -> dict[str, Tensor]:
        """The tensors that replace the carrier's parameters: generated kernels and masked BN affines."""
        tensors = {f"{path}.weight": weight for path, weight in self.kernels().items()}
        modules = dict(self.model.named_modules())
        for path, group in self.norms.items():
            mask = self.mask(group)
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
    """Read every conv/linear's latent sources and every BN's masking group off the channel space."""
    owners = {key: space.groups[i].name for key, i in space.member_groups().items()}
    if space.concats:
        concat = space.concats[0]
        raise HypernetError(
            f"{concat.path!r} holds several channel groups side by side (a concatenation); the hypernetwork "
            "generates layers whose every dimension is one group"
        )
    for group in space:
        for member in group.members:
            if member.kind == "param":
                raise HypernetError(
                    f"group {group.name!r} owns raw parameter {member.path!r}; "
                    "the hypernetwork generates conv and linear kernels only"
                )
    layers, norms = [], {}
    for path, module in model.named_modules():
        out_group, in_group = owners.get((path, "out")), owners.get((path, "in"))
        if isinstance(module, nn.Conv2d):
            if is_depthwise(module):
                group = out_group or in_group
                layers.append(HyperLayer(path, tuple(module.weight.shape), group, None, depthwise=True))
                continue
            if module.groups != 1:
                raise HypernetError(f"{path}: grouped conv ({module.groups} groups) cannot be generated")
            layers.append(HyperLayer(path, tuple(module.weight.shape), out_group, in_group))
        elif isinstance(module, nn.Linear):
            repeat = module.in_features // widths[in_group] if in_group else 1
            layers.append(
                HyperLayer(path, tuple(module.weight.shape), out_group, in_group, repeat, linear=True)
            )
        elif isinstance(module, BATCH_NORMS):
            norms[path] = out_group or in_group
        elif (out_group or in_group) and any(True for _ in module.parameters(recurse=False)):
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


def _index(kept: Mapping[str, Tensor], group: str | None, repeat: int = 1) -> Tensor | None:
    """Kept positions along a latent (None: keep all); a flattened input keeps each channel's whole block."""
    if group is None or group not in kept:
        return None
    index = kept[group]
    if repeat == 1:
        return index
    return (index[:, None] * repeat + torch.arange(repeat)[None, :]).flatten()


def _take(tensor: Tensor, dim: int, index: Tensor | None) -> Tensor:
    return tensor if index is None else tensor.index_select(dim, index.to(tensor.device))


def shrink(hypernet: Hypernet, keep: Mapping[str, Sequence[int]]) -> Hypernet:
    """The hypernetwork restricted to the kept channels (by group; unlisted groups keep all), same values.

    Kept indices are sorted, so channel order is preserved; the shrunk kernels equal the corresponding
    slices of the widened kernels exactly, and the carrier's BN affines, statistics and biases are sliced.
    """
    unknown = [name for name in keep if name not in hypernet.space]
    if unknown:
        raise HypernetError(f"shrink: no channel group {unknown[0]!r}")
    kept: dict[str, Tensor] = {}
    for name, indices in keep.items():
        index = torch.as_tensor(sorted({int(i) for i in indices}), dtype=torch.long)
        width = hypernet.widths[name]
        if index.numel() == 0 or index[0] < 0 or index[-1] >= width:
            raise HypernetError(
                f"shrink: group {name!r} keeps {list(indices)[:8]}, not indices in [0, {width})"
            )
        kept[name] = index
    values = {name: int(kept[name].numel()) if name in kept else w for name, w in hypernet.widths.items()}
    widths = Widths.from_mapping(hypernet.space, values)
    device = next(iter(hypernet.latents.values())).device
    model = materialize(hypernet.spec, widths).to(device)
    layers, norms = _layers(model, hypernet.space, widths)
    latents = {
        name: _take(z.detach(), 0, kept.get(name)).clone().requires_grad_()
        for name, z in hypernet.latents.items()
    }
    old_layers = {layer.path: layer for layer in hypernet.layers}
    w1, w2 = {}, {}
    for layer in layers:
        old = old_layers[layer.path]
        rows = _index(kept, old.out_group)
        cols = None if old.depthwise else _index(kept, old.in_group, old.in_repeat)
        w1[layer.path] = _take(_take(hypernet.w1[layer.path], 1, rows), 2, cols).clone()
        w2[layer.path] = _take(_take(hypernet.w2[layer.path], 1, rows), 2, cols).clone()
    _copy_carrier(hypernet, model, kept)
    return Hypernet(hypernet.spec, hypernet.space, widths, model, latents, layers, w1, w2, norms)


def _copy_carrier(hypernet: Hypernet, model: nn.Module, kept: Mapping[str, Tensor]) -> None:
    """Copy the widened carrier's biases, BN affines and statistics into the shrunk one, sliced by group."""
    generated = {f"{layer.path}.weight" for layer in hypernet.layers}
    source = dict(hypernet.model.named_modules())
    groups = {layer.path: layer.out_group for layer in hypernet.layers} | dict(hypernet.norms)
    with torch.no_grad():
        for path, module in model.named_modules():
            tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            for name, tensor in tensors:
                full = f"{path}.{name}" if path else name
                if full in generated:
                    continue
                old = getattr(source[path], name)
                if old.dim() > 0:
                    old = _take(old, 0, _index(kept, groups.get(path)))
                if old.shape != tensor.shape:
                    raise HypernetError(
                        f"shrink: cannot carry {full} from {tuple(old.shape)} to {tuple(tensor.shape)}"
                    )
                tensor.copy_(old)
