"""Li et al.'s named pruned models (`l1_filter`'s `preset`): which groups, at which ratio, which are skipped.

Li et al. prune the first conv of each residual block (our `mid` groups; the streams of option A shortcuts
are never pruned) with one ratio per stage, and skip the blocks their sensitivity analysis found fragile;
VGG-16-A prunes conv1 and conv8-conv13 by half. The block lists are the reference code's layer ids
(even ids are the blocks' first convs) written as (stage, block). Each preset also carries the paper's
table numbers (Li et al., Table 1; Rethinking, Table 3.1) that tests check it against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from widthtune.models.space import ChannelSpace


@dataclass(frozen=True)
class Preset:
    """One named pruned model: the model it applies to, per-stage ratios, skipped blocks, the paper's numbers."""

    name: str
    family: str
    shape: tuple[int, ...]  # prunable layers per stage: residual blocks (`mid` groups), or VGG convs
    stage_ratios: tuple[float, ...] = ()  # residual nets: the ratio of every block's `mid` group per stage
    skipped: tuple[tuple[int, int], ...] = ()  # (stage, block) kept whole
    groups: Mapping[str, float] | None = None  # VGG: group -> ratio
    paper_macs: float = 0.0
    paper_params: float = 0.0

    def ratios(self, space: ChannelSpace) -> dict[str, float]:
        """group -> ratio for every group this preset prunes (after `check` has accepted the space)."""
        if self.groups is not None:
            return dict(self.groups)
        return {
            g.name: self.stage_ratios[g.stage - 1]
            for g in space
            if g.role == "mid"
            and g.stage is not None
            and (g.stage, g.block) not in self.skipped
            and self.stage_ratios[g.stage - 1] > 0
        }

    def check(self, space: ChannelSpace) -> None:
        """The preset names this model: its prunable layers per stage (VGG convs, or residual blocks)."""
        role = "conv" if self.groups is not None else "mid"
        counts: dict[int, int] = {}
        for group in space:
            if group.role == role and group.stage is not None:
                counts[group.stage] = counts.get(group.stage, 0) + 1
        found = tuple(counts[s] for s in sorted(counts))
        if found != self.shape:
            raise ValueError(
                f"method.preset: {self.name!r} prunes a {self.family} with {'-'.join(map(str, self.shape))} "
                f"{role} layers per stage; this model has {'-'.join(map(str, found)) or 'none'}"
            )


def _vgg16(ratio: float) -> dict[str, float]:
    return {name: ratio for name in ("conv1", "conv8", "conv9", "conv10", "conv11", "conv12", "conv13")}


_RESNET34_SKIPPED = ((1, 1), (2, 1), (2, 4), (3, 1), (3, 6), (4, 1), (4, 2), (4, 3))

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "vgg16-a", "vgg_cifar", (2, 2, 3, 3, 3), groups=_vgg16(0.5), paper_macs=2.06e8, paper_params=5.4e6
        ),
        Preset(
            "resnet56-a",
            "resnet_cifar",
            (9, 9, 9),
            (0.1, 0.1, 0.1),
            ((1, 8), (2, 1), (3, 1), (3, 9)),
            paper_macs=1.124e8,
            paper_params=0.77e6,
        ),
        Preset(
            "resnet56-b",
            "resnet_cifar",
            (9, 9, 9),
            (0.6, 0.3, 0.1),
            ((1, 8), (1, 9), (2, 1), (2, 8), (3, 1), (3, 9)),
            paper_macs=0.909e8,
            paper_params=0.73e6,
        ),
        Preset(
            "resnet110-a",
            "resnet_cifar",
            (18, 18, 18),
            (0.5, 0.0, 0.0),
            ((1, 18),),
            paper_macs=2.13e8,
            paper_params=1.68e6,
        ),
        Preset(
            "resnet110-b",
            "resnet_cifar",
            (18, 18, 18),
            (0.5, 0.4, 0.3),
            ((1, 18), (2, 1), (3, 1)),
            paper_macs=1.55e8,
            paper_params=1.16e6,
        ),
        Preset(
            "resnet34-a",
            "resnet",
            (3, 4, 6, 3),
            (0.3, 0.3, 0.3, 0.0),
            _RESNET34_SKIPPED,
            paper_macs=3.08e9,
            paper_params=1.99e7,
        ),
        Preset(
            "resnet34-b",
            "resnet",
            (3, 4, 6, 3),
            (0.5, 0.6, 0.4, 0.0),
            _RESNET34_SKIPPED,
            paper_macs=2.76e9,
            paper_params=1.93e7,
        ),
    )
}
# the unpruned models of the paper's table, for the presets' relative numbers
PAPER_BASE = {
    "vgg16": (3.13e8, 1.5e7),
    "resnet56": (1.25e8, 0.85e6),
    "resnet110": (2.53e8, 1.72e6),
    "resnet34": (3.64e9, 2.16e7),
}


def get_preset(name: str) -> Preset:
    """The named preset, or a one-line error listing them."""
    if name not in PRESETS:
        raise ValueError(f"method.preset: {name!r} is not a preset; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
