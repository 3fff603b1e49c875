"""Channel groups of any traceable model, read from the channel layouts of Torch-Pruning's traced graph."""

from __future__ import annotations

import math

import torch
from torch import nn

from widthtune.models.graph_layouts import MemberKey, Trace, trace_channels
from widthtune.models.space import ChannelGroup, ChannelSpace, Concatenation, Member
from widthtune.models.unknowns import Layout, Shuffled, Unknowns, UnsupportedModelError

__all__ = ["UnsupportedModelError", "dependency_space"]


def dependency_space(
    model: nn.Module, example: torch.Tensor, *, min_width: int = 1, divisor: int = 1
) -> ChannelSpace:
    """One group per width unknown a conv or linear writes, named after the first layer that writes it alone.

    A dimension holding one group whole is a member of it; one holding several side by side (a
    concatenation's consumer, a chunk's tied pieces, shuffled channels) is a `Concatenation`.
    """
    trace = trace_channels(model, example)
    unknowns = trace.unknowns
    modules = dict(model.named_modules())
    order = {path: i for i, path in enumerate(modules)}
    _check_parameters(trace, unknowns)
    divisors = _divisors(trace, unknowns, divisor)
    flat = {key: _flatten(unknowns, layout) for key, layout in trace.members.items()}
    writers: dict[int, list[MemberKey]] = {}
    for key, (parts, _) in flat.items():
        if key[1] == "out" and isinstance(modules.get(key[0]), nn.Conv2d | nn.Linear):
            for var in dict.fromkeys(p for p in parts if not unknowns.is_fixed(p)):
                writers.setdefault(var, []).append(key)
    names: dict[int, tuple[int, str]] = {}
    for var, keys in writers.items():
        keys.sort(key=lambda k: order[k[0]])
        whole = [k for k in keys if flat[k] == ((var,), False)]
        if whole:
            names[var] = (order[whole[0][0]], whole[0][0])
        else:
            path = keys[0][0]
            distinct = list(dict.fromkeys(p for p in flat[keys[0]][0] if not unknowns.is_fixed(p)))
            names[var] = (order[path], path if len(distinct) == 1 else f"{path}[{distinct.index(var)}]")
    ranked = sorted(names, key=lambda var: names[var])
    members: dict[int, list[Member]] = {var: [] for var in ranked}
    concats: list[Concatenation] = []
    for key, (parts, shuffled) in flat.items():  # in the order the trace first met them
        path, kind, dim = key
        if len(parts) == 1 and not shuffled and parts[0] in members:
            members[parts[0]].append(Member(path, kind, dim))  # type: ignore[arg-type]
            continue
        if not any(p in members for p in parts):
            continue  # every channel here stays as the model has it
        concats.append(
            Concatenation(path, kind, _named_parts(parts, unknowns, names), dim=dim, shuffled=shuffled)  # type: ignore[arg-type]
        )
    groups = []
    for var in ranked:
        group_divisor = divisors.get(var, divisor)
        groups.append(
            ChannelGroup(
                names[var][1],
                unknowns.base(var),
                tuple(members[var]),
                min=max(min_width, group_divisor),
                divisor=group_divisor,
                role="stream" if len(writers[var]) > 1 else "conv",
            )
        )
    return ChannelSpace(tuple(groups), tuple(concats))


def _flatten(unknowns: Unknowns, layout: Layout) -> tuple[tuple[int, ...], bool]:
    """A layout's unknowns in channel order, and whether a shuffle permuted any of them."""
    parts = unknowns.expand(layout)
    return tuple(unknowns.leaves(parts)), any(isinstance(p, Shuffled) for p in parts)


def _named_parts(parts: tuple[int, ...], unknowns: Unknowns, names: dict[int, tuple[int, str]]) -> tuple:
    """Group names in order, runs of channels no group owns merged into one count."""
    named: list[str | int] = []
    for var in parts:
        if var in names:
            named.append(names[var][1])
        elif named and isinstance(named[-1], int):
            named[-1] += unknowns.base(var)
        else:
            named.append(unknowns.base(var))
    return tuple(named)


def _check_parameters(trace: Trace, unknowns: Unknowns) -> None:
    for (path, kind, _), layout in trace.members.items():
        if kind == "param":
            free = [v for v in unknowns.leaves(layout) if not unknowns.is_fixed(v)]
            if len(list(unknowns.leaves(layout))) > 1 and free:
                raise UnsupportedModelError(
                    f"parameter {path!r}: spans several channel groups side by side; only whole groups "
                    "can resize a raw parameter"
                )


def _divisors(trace: Trace, unknowns: Unknowns, divisor: int) -> dict[int, int]:
    """Each free unknown's divisor: grouped convs, group norms and channel shuffles need whole groups.

    A layout of total sum(count_v * w_v) splits into g equal groups for every width when each w_v is a
    multiple of g / gcd(g, count_v); channels no group owns must then split evenly on their own, else they
    are pinned with the rest.
    """
    divisors: dict[int, int] = {}
    changed = True
    while changed:
        changed = False
        for layout, groups in trace.divisible:
            counts, pinned = unknowns.counts(layout)
            if not counts:
                continue
            if pinned % groups:
                unknowns.fix(layout)
                changed = True
                break
            for var, count in counts.items():
                need = math.lcm(divisors.get(var, divisor), groups // math.gcd(groups, count))
                if need != divisors.get(var, divisor):
                    divisors[var] = need
    return divisors
