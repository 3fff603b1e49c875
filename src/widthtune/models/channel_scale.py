"""Channel scaling: multiply each group's channels by a vector at every module that writes them (soft masks).

A group's channels are written by its norm layers (a BN's output is what the next layer reads) and, where a
group has no norm, by its convs and linears; a residual stream is written by every block that adds into it,
and a zero-pad (option A) shortcut writes the padded stream too. Scaling every writer by the same vector
scales the group's channels wherever they are read, so a vector of zeros and ones is the sub-network of the
kept channels (DMCP's sandwich sub-networks) and a vector of keep probabilities is DMCP's expected network.
Scaling after the norm matters: a train-mode BN would normalise a scale applied before it away.

A zero-pad shortcut routes by position, and a narrower network re-centres its padding: from a stream of a
channels into one of b it puts channel i at i + (b - a) // 2 (or cuts at b when b < a). So a masked zero-pad
shortcut is re-routed as the narrower network's own would be, reading each side's width as the prefix its
scale keeps (the rounded sum of the scale: exact for DMCP's hard masks, the expected width for its soft
ones), and then scaled by the sink's vector like every writer. Without that, a hard mask would run a
sub-network whose shortcut carries other channels than the network it exports (see models.inherit).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from widthtune.models.inherit import pad_shortcuts
from widthtune.models.space import ChannelSpace

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def writers(model: nn.Module, space: ChannelSpace) -> dict[str, list[str]]:
    """Per group, the paths of the modules whose outputs carry its channels last (norms, else convs/linears).

    A group a zero-pad shortcut adds into lists that shortcut too (the scaler re-routes it, then scales it).
    """
    modules = dict(model.named_modules())
    found: dict[str, list[str]] = {}
    for group in space:
        outs = [m.path for m in group.members if m.kind == "out" and m.path in modules]
        norms = [path for path in outs if isinstance(modules[path], NORMS)]
        layers = [path for path in outs if isinstance(modules[path], nn.Conv2d | nn.Linear)]
        found[group.name] = norms or layers
    for path, _, sink in pad_shortcuts(model, space):
        found[sink.name].append(path)
    return found


class ChannelScaler:
    """Forward hooks on `model` that scale each group's channels by `scales[group]` (None: unscaled).

    Set `scales` before each forward; `remove` takes the hooks off again.
    """

    def __init__(self, model: nn.Module, space: ChannelSpace) -> None:
        self.scales: Mapping[str, Tensor | None] = {}
        modules = dict(model.named_modules())
        routes = {path: source.name for path, source, _ in pad_shortcuts(model, space)}
        self._hooks = [
            modules[path].register_forward_hook(
                self._route(routes[path], name) if path in routes else self._hook(name)
            )
            for name, paths in writers(model, space).items()
            for path in paths
        ]

    def _hook(self, name: str):
        def scale(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
            factor = self.scales.get(name)
            if factor is None:
                return output
            shape = (1, -1) + (1,) * (output.dim() - 2)
            return output * factor.to(output.dtype).view(shape)

        return scale

    def _route(self, source: str, sink: str):
        def route(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
            into, out = self.scales.get(source), self.scales.get(sink)
            if into is None and out is None:
                return output
            x = inputs[0][:, :, :: module.stride, :: module.stride]
            total = output.shape[1]
            a = x.shape[1] if into is None else _prefix_width(into)
            b = total if out is None else _prefix_width(out)
            routed = output.new_zeros(output.shape)
            start = max(b - a, 0) // 2
            kept = min(a, b)
            routed[:, start : start + kept] = x[:, :kept]
            if out is None:
                return routed
            return routed * out.to(output.dtype).view(1, -1, *([1] * (output.dim() - 2)))

        return route

    def remove(self) -> None:
        """Take every hook off the model."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def _prefix_width(scale: Tensor) -> int:
    """The width a scale vector keeps, read as a prefix: its sum, rounded (at least one channel)."""
    return max(1, round(float(scale.detach().sum())))


def prefix_mask(width: int, total: int, device: torch.device | str = "cpu") -> Tensor:
    """Ones on the first `width` of `total` channels, zeros after: the sub-network keeping the first channels."""
    mask = torch.zeros(total, device=device)
    mask[:width] = 1.0
    return mask
