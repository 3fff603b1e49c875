"""The arithmetic cost model: MACs, FLOPs, LW-DNA FLOPs and params of any width vector, from one traced pass.

Every conv and linear costs coef * w_out * w_in (depthwise: coef * w), every BN/ReLU output element is
coef * w, and every parameter tensor is a product of group widths and constants -- so after one trace of
the base model, the cost of any width vector is a dot product over a few hundred terms. A dimension that
concatenates groups has the sum of their widths as its w, so its products expand into one term per pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from widthtune.models.space import ChannelSpace
from widthtune.models.spec import ModelSpec
from widthtune.models.surgery import is_depthwise
from widthtune.models.widths import Widths

Convention = Literal["macs", "flops", "lwdna", "params"]
CONVENTIONS: tuple[str, ...] = ("macs", "flops", "lwdna", "params")
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class Terms:
    """A sum of coef * w[a] * w[b]; index len(space) stands for the constant 1."""

    coef: np.ndarray
    a: np.ndarray
    b: np.ndarray

    @classmethod
    def of(cls, rows: list[tuple[float, int, int]]) -> Terms:
        """Pack (coef, a, b) rows into arrays."""
        if not rows:
            return cls(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        coef, a, b = zip(*rows, strict=True)
        return cls(
            np.asarray(coef, dtype=np.float64), np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        )

    def evaluate(self, extended: np.ndarray) -> np.ndarray:
        """Cost for one width vector, or a batch of them (last axis: groups + the constant)."""
        return (self.coef * extended[..., self.a] * extended[..., self.b]).sum(axis=-1)

    def evaluate_tensor(self, extended: torch.Tensor) -> torch.Tensor:
        """The same sum on a tensor of (real-valued) widths, differentiable in them (DMCP's expected cost)."""
        coef = torch.as_tensor(self.coef, dtype=extended.dtype, device=extended.device)
        a = torch.as_tensor(self.a, device=extended.device)
        b = torch.as_tensor(self.b, device=extended.device)
        return (coef * extended[..., a] * extended[..., b]).sum(dim=-1)

    def scaled(self, factor: float) -> Terms:
        """Every coefficient times `factor`."""
        return Terms(self.coef * factor, self.a, self.b)

    def plus(self, other: Terms) -> Terms:
        """The sum of two term lists."""
        return Terms(
            np.concatenate([self.coef, other.coef]),
            np.concatenate([self.a, other.a]),
            np.concatenate([self.b, other.b]),
        )


@dataclass(frozen=True)
class Cost:
    """Every convention's figure for one width vector."""

    macs: int
    flops: int
    lwdna: int
    params: int

    def __getitem__(self, convention: str) -> int:
        if convention not in CONVENTIONS:
            raise KeyError(f"unknown cost convention {convention!r}; choose one of: {', '.join(CONVENTIONS)}")
        return getattr(self, convention)

    def as_dict(self) -> dict[str, int]:
        """For JSON and result rows."""
        return {name: getattr(self, name) for name in CONVENTIONS}


class _ChannelLabels(TorchFunctionMode):
    """Tags tensors with their channels' parts; carries tags through shape-keeping ops and channel concats."""

    def __init__(self, const: int) -> None:
        super().__init__()
        self.const = const
        self.labels: dict[int, tuple[Part, ...]] = {}
        self._alive: list[torch.Tensor] = []  # keeps ids unique for the trace's lifetime

    def tag(self, tensor: torch.Tensor, parts: tuple[Part, ...]) -> None:
        self.labels[id(tensor)] = parts
        self._alive.append(tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor) or id(out) in self.labels:
            return out
        if getattr(func, "__name__", "") in ("cat", "concat", "concatenate") and out.dim() > 1:
            tensors = list(args[0] if args else kwargs["tensors"])
            dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
            if dim == 1 and any(id(t) in self.labels for t in tensors):
                parts: list[Part] = []
                for t in tensors:
                    parts.extend(self.labels.get(id(t), ((self.const, t.shape[1]),)))
                self.tag(out, tuple(parts))
            return out
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.shape == out.shape and id(arg) in self.labels:
                self.tag(out, self.labels[id(arg)])
                break
        return out


Part = tuple[int, int]  # (group index, or the constant's index; channels at the base)
Form = list[tuple[int, float]]  # channels = sum of multiplier x w[index], with w[const] = 1


@dataclass(frozen=True)
class _ChannelSource:
    """Where a layer's channel counts come from: its groups' widths side by side, or a fixed count."""

    layouts: dict[tuple[str, str], tuple[Part, ...]]
    base: tuple[int, ...]

    @classmethod
    def of(cls, space: ChannelSpace) -> _ChannelSource:
        const = len(space)
        layouts = {
            key: tuple((const if group is None else group, channels) for group, channels in parts)
            for key, parts in space.layouts().items()
        }
        return cls(layouts, tuple(group.base for group in space))

    @property
    def const(self) -> int:
        return len(self.base)

    def parts(self, path: str, kind: str) -> tuple[Part, ...] | None:
        """The (index, base channels) parts of a layer dimension; None when no group reaches it."""
        return self.layouts.get((path, kind))

    def form(self, parts: tuple[Part, ...] | None, channels: int) -> Form:
        """`channels` as a sum of group widths: each part scaled by channels / (the parts' base total)."""
        if parts is None:
            return [(self.const, float(channels))]
        scale = channels / sum(count for _, count in parts)
        return [
            (index, scale * count) if index == self.const else (index, scale * count / self.base[index])
            for index, count in parts
        ]

    def factor(self, path: str, kind: str, channels: int) -> Form:
        """A layer dimension's `channels` as a sum of multiplier x w[index], with w[const] = 1."""
        return self.form(self.parts(path, kind), channels)

    def weight(self, module: nn.Conv2d | nn.Linear, path: str) -> list[tuple[float, int, int]]:
        """A conv's or linear's weight size as a sum of coef * w[a] * w[b] (depthwise: linear in its groups)."""
        if isinstance(module, nn.Linear):
            outs = self.factor(path, "out", module.out_features)
            ins = self.factor(path, "in", module.in_features)
            return _product(outs, ins, 1.0)
        kernel = module.kernel_size[0] * module.kernel_size[1]
        if is_depthwise(module):
            parts = self.parts(path, "out") or self.parts(path, "in")
            return [(kernel * m, index, self.const) for index, m in self.form(parts, module.out_channels)]
        outs = self.factor(path, "out", module.out_channels)
        ins = self.factor(path, "in", module.in_channels)
        return _product(outs, ins, kernel / module.groups)


def _product(left: Form, right: Form, coef: float) -> list[tuple[float, int, int]]:
    return [(coef * m * n, a, b) for a, m in left for b, n in right]


@dataclass(frozen=True)
class CostModel:
    """Cost of any width vector of one model, exact against FlopCounterMode and parameters()."""

    space: ChannelSpace
    macs_terms: Terms
    activation_terms: Terms  # the LW-DNA extras: 2 per BN output element, 1 per ReLU output element
    params_terms: Terms

    @classmethod
    def from_spec(cls, spec: ModelSpec | str) -> CostModel:
        """Trace the base model a spec names once, in the form that ships (RepVGG: merged)."""
        from widthtune.models.registry import channel_space, deploy, input_shape, materialize
        from widthtune.models.spec import parse_spec

        spec = parse_spec(spec)  # once: every call below takes the parsed spec as it is
        model = deploy(spec, materialize(spec))
        return cls.trace(model, channel_space(spec), torch.zeros(input_shape(spec)))

    @classmethod
    def trace(cls, model: nn.Module, space: ChannelSpace, example: torch.Tensor) -> CostModel:
        """Record each layer's spatial size in one forward pass of the base model and express its cost in groups."""
        channels = _ChannelSource.of(space)
        const = channels.const
        labels = _ChannelLabels(const)
        macs: list[tuple[float, int, int]] = []
        acts: list[tuple[float, int, int]] = []
        paths = {module: path for path, module in model.named_modules()}

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            path = paths[module]
            batch = output.shape[0]
            if isinstance(module, nn.Conv2d | nn.Linear):
                # MACs = weight size x output positions (spatial for convs, tokens for linears)
                positions = output.numel() // (
                    batch * output.shape[1 if isinstance(module, nn.Conv2d) else -1]
                )
                macs.extend((coef * positions, a, b) for coef, a, b in channels.weight(module, path))
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                per_channel = 2 * output.numel() / batch / module.num_features
                form = channels.factor(path, "out", module.num_features)
                acts.extend((per_channel * m, index, const) for index, m in form)
            elif isinstance(module, nn.ReLU | nn.ReLU6):
                parts = labels.labels.get(id(inputs[0]))
                if parts is None:
                    acts.append((output.numel() / batch, const, const))
                else:
                    per_channel = output.numel() / batch / output.shape[1]
                    form = channels.form(parts, output.shape[1])
                    acts.extend((per_channel * m, index, const) for index, m in form)
            parts = channels.parts(path, "out")
            if parts is not None:
                labels.tag(output, parts)

        watched = (nn.Conv2d, nn.Linear, nn.ReLU, nn.ReLU6, *NORMS)
        hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, watched)]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), labels:
                model(example)
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        return cls(space, Terms.of(macs), Terms.of(acts), Terms.of(_parameter_terms(model, space)))

    def extended(self, widths: Widths | Mapping[str, int] | np.ndarray) -> np.ndarray:
        """Width values in group order with the trailing constant 1."""
        if isinstance(widths, np.ndarray):
            values = widths.astype(np.float64)
        elif isinstance(widths, Widths):
            values = np.asarray(widths.values, dtype=np.float64)
        else:
            values = np.asarray([widths[name] for name in self.space.names], dtype=np.float64)
        ones = np.ones((*values.shape[:-1], 1))
        return np.concatenate([values, ones], axis=-1)

    def evaluate(self, widths: Widths | Mapping[str, int]) -> Cost:
        """Every convention at once."""
        ext = self.extended(widths)
        exact_macs = float(self.macs_terms.evaluate(ext))
        macs = round(exact_macs)
        lwdna = round(exact_macs + float(self.activation_terms.evaluate(ext)))
        return Cost(
            macs=macs, flops=2 * macs, lwdna=lwdna, params=round(float(self.params_terms.evaluate(ext)))
        )

    def cost(self, widths: Widths | Mapping[str, int] | np.ndarray, convention: str = "macs") -> float:
        """One convention's figure; also takes a (batch, groups) array of raw width values."""
        ext = self.extended(widths)
        if convention == "macs":
            return self.macs_terms.evaluate(ext)
        if convention == "flops":
            return 2 * self.macs_terms.evaluate(ext)
        if convention == "lwdna":
            return self.macs_terms.evaluate(ext) + self.activation_terms.evaluate(ext)
        if convention == "params":
            return self.params_terms.evaluate(ext)
        raise ValueError(f"cost convention {convention!r} is not one of: {', '.join(CONVENTIONS)}")

    def terms(self, convention: str = "macs") -> Terms:
        """One convention's cost as coef x w[a] x w[b] terms (index len(space) is the constant 1)."""
        if convention == "macs":
            return self.macs_terms
        if convention == "flops":
            return self.macs_terms.scaled(2.0)
        if convention == "lwdna":
            return self.macs_terms.plus(self.activation_terms)
        if convention == "params":
            return self.params_terms
        raise ValueError(f"cost convention {convention!r} is not one of: {', '.join(CONVENTIONS)}")

    def cost_tensor(self, widths: torch.Tensor, convention: str = "macs") -> torch.Tensor:
        """One convention's figure for real-valued widths (groups in order), differentiable in them."""
        ones = torch.ones((*widths.shape[:-1], 1), dtype=widths.dtype, device=widths.device)
        return self.terms(convention).evaluate_tensor(torch.cat([widths, ones], dim=-1))

    def base(self) -> Cost:
        """The base model's cost."""
        return self.evaluate(Widths.base(self.space))


def _parameter_terms(model: nn.Module, space: ChannelSpace) -> list[tuple[float, int, int]]:
    """Each parameter tensor's size as coef * w[a] * w[b] (conv/linear weights are bilinear, the rest linear)."""
    channels = _ChannelSource.of(space)
    const = channels.const
    raw_members = {(m.path, m.dim): i for i, g in enumerate(space) for m in g.members if m.kind == "param"}
    rows: list[tuple[float, int, int]] = []
    for path, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            full = f"{path}.{name}" if path else name
            raw = [
                (dim, raw_members[(full, dim)]) for dim in range(param.dim()) if (full, dim) in raw_members
            ]
            if raw:
                _, group = raw[0]
                rows.append((param.numel() / channels.base[group], group, const))
            elif isinstance(module, nn.Conv2d | nn.Linear) and name == "weight":
                rows.extend(channels.weight(module, path))
            elif isinstance(
                module, (nn.Conv2d, nn.Linear, *NORMS)
            ):  # biases and norm affines follow the output
                form = channels.factor(path, "out", param.shape[0])
                rows.extend((m, index, const) for index, m in form)
            else:
                rows.append((float(param.numel()), const, const))
    return rows
