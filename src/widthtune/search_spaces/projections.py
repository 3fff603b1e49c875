"""Width transfer: project a target model and data to a cheap proxy, extrapolate the proxy's widths back.

A `Projection` is relative to the target: the proxy is `width_mult` times as wide, has `depth_mult` times the
blocks per stage (rounded up, at least one; MobileNetV2's first and last stage are never depth-projected),
trains at `resolution` pixels (None keeps the target's) on `data_fraction` of its training data (class-balanced).

Extrapolation maps every target group to proxy groups by (stage, block, role): groups without a block (stage
streams, stems, heads) by name; block groups one to one when a stage's depth is unchanged, otherwise by a
stacking rule. `stack-average-block` keeps the first block's multiplier and gives every later block the mean
of the proxy's later blocks (the first block of a stage changes resolution and is left out of the average);
`stack-last-block` repeats the proxy's last block. Both rules stack, as the paper's section 3.2 says ("stack
the average width multipliers until the desired depth is met"): a target block the proxy has keeps that
block's multiplier, and only the blocks the proxy lacks are appended, each with the average of the proxy's
blocks after the first (`stack-average-block`) or its last block (`stack-last-block`); a one-block proxy
stage stacks that block under both. Multipliers are widths over the proxy's own base widths;
times the target's base widths they are the target's shape, which one multiplier (`match_cost`) brings to the
target's cost.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from widthtune.models.cost import CostModel
from widthtune.models.match import CostMatch, match_cost
from widthtune.models.mobilenet_v2 import DEFAULTS as MOBILENET_DEFAULTS
from widthtune.models.registry import canonical_spec, channel_space, resolve_options
from widthtune.models.resnet import architecture
from widthtune.models.resnet_cifar import blocks_per_stage
from widthtune.models.space import ChannelGroup, ChannelSpace
from widthtune.models.spec import ModelSpec
from widthtune.models.widths import Widths

EXTRAPOLATIONS = ("stack-average-block", "stack-last-block")
AXES = ("width", "depth", "resolution", "data_fraction")
WIDTH_FAMILIES = ("resnet_cifar", "vgg_cifar", "mobilenet_v2", "resnet")
DEPTH_FAMILIES = ("resnet_cifar", "mobilenet_v2", "resnet")

# The paper's studies as absolute (width, depth, resolution, dataset fraction) points, sources then target.
PAPER_GRIDS: dict[
    str, tuple[tuple[tuple[float, float, int, float], ...], tuple[float, float, int, float]]
] = {
    "width": (tuple((w, 4, 320, 1.0) for w in (0.312, 0.5, 0.707, 1.0, 1.414, 1.732)), (1.732, 4, 320, 1.0)),
    "depth": (tuple((1.732, d, 320, 1.0) for d in (1, 2, 3, 4)), (1.732, 4, 320, 1.0)),
    "resolution": (tuple((1.732, 4, r, 1.0) for r in (64, 160, 224, 320)), (1.732, 4, 320, 1.0)),
    "data_fraction": (
        tuple((1.732, 4, 320, f) for f in (0.05, 0.1, 0.2, 0.5, 1.0)),
        (1.732, 4, 320, 1.0),
    ),
    "compound": (
        ((0.312, 1, 64, 0.05), (0.707, 1, 160, 0.1), (1.0, 1, 224, 0.5), (1.414, 2, 320, 1.0)),
        (1.414, 2, 320, 1.0),
    ),
}


class ProjectionError(ValueError):
    """A projection cannot be applied to this model or data; the message names the axis and what is allowed."""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Projection:
    """How much narrower, shallower, lower-resolution and smaller-data the proxy is than the target."""

    width_mult: float = 1.0
    depth_mult: float = 1.0
    resolution: int | None = None
    data_fraction: float = 1.0

    def __post_init__(self) -> None:
        for name, value, ok, allowed in (
            ("width", self.width_mult, _number(self.width_mult) and self.width_mult > 0, "a number > 0"),
            ("depth", self.depth_mult, _number(self.depth_mult) and self.depth_mult > 0, "a number > 0"),
            (
                "resolution",
                self.resolution,
                self.resolution is None or (isinstance(self.resolution, int) and self.resolution >= 4),
                "an integer >= 4 (pixels), or null to keep the target's",
            ),
            (
                "data_fraction",
                self.data_fraction,
                _number(self.data_fraction) and 0 < self.data_fraction <= 1,
                "a number in (0, 1]",
            ),
        ):
            if not ok:
                raise ProjectionError(f"projection.{name}: {value!r} is not allowed; choose {allowed}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | Sequence[Any]) -> Projection:
        """From `{width, depth, resolution, data_fraction}` or a `[width, depth, resolution, fraction]` tuple."""
        if isinstance(values, Mapping):
            unknown = [k for k in values if k not in AXES]
            if unknown:
                raise ProjectionError(
                    f"projection.{unknown[0]}: unknown axis; choose from: {', '.join(AXES)}"
                )
            values = [
                values.get(axis, default) for axis, default in zip(AXES, (1.0, 1.0, None, 1.0), strict=True)
            ]
        elif isinstance(values, str) or len(values) != 4:
            raise ProjectionError(
                f"projection: {values!r} is not allowed; write {{width, depth, resolution, data_fraction}} "
                "or a 4-tuple [width, depth, resolution, data_fraction]"
            )
        return cls(*values)

    @classmethod
    def between(cls, source: Sequence[float], target: Sequence[float]) -> Projection:
        """The projection from an absolute target point to an absolute source point (the paper's notation)."""
        (w, d, r, f), (tw, td, _, tf) = source, target
        return cls(w / tw, d / td, int(r), f / tf)

    @property
    def label(self) -> str:
        """A short, file-safe name: `w0.5-d0.5-r16-f0.25` (axes at their identity are left out)."""
        parts = []
        if self.width_mult != 1:
            parts.append(f"w{self.width_mult:.4g}")
        if self.depth_mult != 1:
            parts.append(f"d{self.depth_mult:.4g}")
        if self.resolution is not None:
            parts.append(f"r{self.resolution}")
        if self.data_fraction != 1:
            parts.append(f"f{self.data_fraction:.4g}")
        return "-".join(parts) or "identity"

    def as_dict(self) -> dict[str, Any]:
        """Plain values under the config's axis names."""
        values = asdict(self)
        return {
            "width": values["width_mult"],
            "depth": values["depth_mult"],
            "resolution": values["resolution"],
            "data_fraction": values["data_fraction"],
        }

    def model(self, spec: ModelSpec | str) -> ModelSpec:
        """The proxy's model spec."""
        spec = canonical_spec(spec)
        options = resolve_options(spec)
        changes: dict[str, Any] = {}
        if self.width_mult != 1:
            if spec.family not in WIDTH_FAMILIES:
                raise ProjectionError(
                    f"projection.width: {spec.family} models have no width option; "
                    f"width projection works on: {', '.join(WIDTH_FAMILIES)}"
                )
            changes["width"] = options["width"] * self.width_mult
        if self.depth_mult != 1:
            changes.update(_depth_options(spec, options, self.depth_mult))
        if self.resolution is not None:
            changes["resolution"] = self.resolution
        return canonical_spec(spec.with_options(**changes))

    def data(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The proxy's data section: the same dataset at the proxy's resolution and a fraction of its images."""
        out = dict(data)
        if self.resolution is not None:
            out["resolution"] = self.resolution
        if self.data_fraction != 1:
            out["fraction"] = float(data.get("fraction", 1.0)) * self.data_fraction
        return out

    def overhead_ratio(
        self, target_resolution: int, epoch_ratio: float = 1.0, depth_ratio: float | None = None
    ) -> float:
        """The paper's formula: proxy / target optimisation cost = width^2 x depth x resolution^2 x fraction.

        Epochs and batch size are fixed in the paper; a proxy recipe with other epochs scales it by `epoch_ratio`.
        `depth_ratio` is the depth factor actually built (`built_depth_ratio`: blocks are whole, so a depth
        multiplier of 0.34 on 9 blocks builds 4, 0.44 of them); None prices the multiplier itself (the
        paper's notation, where depths are whole multiples).
        """
        resolution = (self.resolution or target_resolution) / target_resolution
        depth = self.depth_mult if depth_ratio is None else depth_ratio
        return self.width_mult**2 * depth * resolution**2 * self.data_fraction * epoch_ratio

    def built_depth_ratio(self, spec: ModelSpec | str) -> float:
        """The proxy's blocks over the target's, as built (whole blocks per stage; unprojected stages count)."""
        if self.depth_mult == 1:
            return 1.0
        target = block_count(spec)
        return block_count(self.model(spec)) / target if target else 1.0


def overhead_saved(ratio: float) -> float:
    """The fraction of the direct optimisation's overhead a proxy saves (the paper's x-axis)."""
    return 1.0 - ratio


def paper_projections(study: str) -> tuple[list[Projection], int]:
    """One of the paper's grids (`width`, `depth`, `resolution`, `data_fraction`, `compound`) and its target resolution."""
    if study not in PAPER_GRIDS:
        raise ProjectionError(f"projection grid {study!r} is not one of: {', '.join(PAPER_GRIDS)}")
    sources, target = PAPER_GRIDS[study]
    return [Projection.between(s, target) for s in sources], int(target[2])


def projection_space(projections: Sequence[Projection]) -> dict[str, Any]:
    """The projections as a Tune grid: one trial per projection under `transfer.projection`."""
    from ray import tune

    return {"transfer.projection": tune.grid_search([p.as_dict() for p in projections])}


def _depth_options(spec: ModelSpec, options: Mapping[str, Any], mult: float) -> dict[str, Any]:
    def scaled(n: int) -> int:
        return max(1, math.ceil(n * mult - 1e-9))

    if spec.family == "resnet_cifar":
        return {"depth": 6 * scaled(blocks_per_stage(options)) + 2}
    if spec.family == "resnet":
        kind, layers = architecture(options)
        return {"layers": "-".join(str(scaled(n)) for n in layers), "block": kind}
    if spec.family == "mobilenet_v2":
        return {"depth_mult": float(options.get("depth_mult", MOBILENET_DEFAULTS["depth_mult"])) * mult}
    raise ProjectionError(
        f"projection.depth: {spec.family} models have no depth option; "
        f"depth projection works on: {', '.join(DEPTH_FAMILIES)} (use depth 1 for {spec.family})"
    )


def block_count(spec: ModelSpec | str) -> int:
    """How many blocks a model builds: the distinct (stage, block) of its channel groups."""
    return len({(g.stage, g.block) for g in channel_space(spec) if g.block is not None})


def _blocks(space: ChannelSpace) -> dict[tuple[int | None, str], list[ChannelGroup]]:
    runs: dict[tuple[int | None, str], list[ChannelGroup]] = {}
    for group in space:
        if group.block is not None:
            runs.setdefault((group.stage, group.role), []).append(group)
    return {key: sorted(groups, key=lambda g: g.block or 0) for key, groups in runs.items()}


def extrapolate(proxy: Widths, target: ChannelSpace, rule: str = "stack-average-block") -> dict[str, float]:
    """The target's width shape (channels, unrounded) from the proxy's optimised widths, by a stacking rule."""
    if rule not in EXTRAPOLATIONS:
        raise ProjectionError(
            f"extrapolation: {rule!r} is not allowed; choose one of: {', '.join(EXTRAPOLATIONS)}"
        )
    ratios = proxy.ratio_to_base()
    proxy_blocks = _blocks(proxy.space)
    shape: dict[str, float] = {}
    for group in target:
        if group.block is None:
            match = [g for g in proxy.space if g.name == group.name] or [
                g for g in proxy.space if g.block is None and (g.stage, g.role) == (group.stage, group.role)
            ]
            if not match:
                raise ProjectionError(
                    f"extrapolation: the proxy has no group for the target's {group.name!r}; "
                    "proxy and target must be the same family"
                )
            shape[group.name] = ratios[match[0].name] * group.base
            continue
        run = proxy_blocks.get((group.stage, group.role))
        if not run:
            raise ProjectionError(
                f"extrapolation: the proxy has no stage {group.stage} {group.role} blocks for {group.name!r}"
            )
        block = group.block or 1
        if block <= len(run):  # the proxy has this block: its own multiplier
            source = [run[block - 1]]
        elif rule == "stack-last-block":
            source = [run[-1]]
        else:  # appended: the mean over the proxy's blocks after the first (the first block alone if none)
            source = run[1:] or run[:1]
        shape[group.name] = statistics.fmean(ratios[g.name] for g in source) * group.base
    return shape


def transfer_widths(
    proxy: Widths,
    cost_model: CostModel,
    target: float,
    *,
    rule: str = "stack-average-block",
    convention: str = "macs",
) -> CostMatch:
    """Extrapolate to the target's groups, then one width multiplier to the target's cost (within 0.5%)."""
    return match_cost(extrapolate(proxy, cost_model.space, rule), target, cost_model, convention=convention)
