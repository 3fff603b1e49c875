"""Width vectors: one validated channel count per group of a ChannelSpace."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from widthtune.models.space import ChannelGroup, ChannelSpace

# A group's width may be at most this many times its base width. Cost matching never scales past it (its
# largest multiplier), a conv 64x as wide on both sides already holds 4096x the base's weights, and anything
# larger (1e9 channels) is a typo or an overflow that would otherwise surface later as an allocation crash.
MAX_WIDTH_RATIO = 64


class WidthsError(ValueError):
    """A width vector does not fit its channel space; the message names the group and what is allowed."""


def smallest_width(group: ChannelGroup) -> int:
    """The group's minimum, raised to a multiple of its divisor so it stays a legal width."""
    return math.ceil(group.min / group.divisor) * group.divisor


def scaled_width(width: int, multiplier: float, divisor: int) -> int:
    """A family's base width under its width multiplier: nearest multiple of the divisor, at least one divisor."""
    return max(divisor, round(width * multiplier / divisor) * divisor)


def largest_width(group: ChannelGroup) -> int:
    """The widest a group may be: MAX_WIDTH_RATIO x its base, lowered to a multiple of its divisor."""
    return max(smallest_width(group), (MAX_WIDTH_RATIO * group.base) // group.divisor * group.divisor)


def round_width(value: float, group: ChannelGroup) -> int:
    """Nearest multiple of the group's divisor, never below the group's minimum."""
    rounded = math.floor(value / group.divisor + 0.5) * group.divisor
    return max(smallest_width(group), rounded)


@dataclass(frozen=True)
class Widths(Mapping[str, int]):
    """An immutable group -> channels mapping, always valid for its space.

    Valid means: an integer multiple of the group's divisor, at least its minimum, at most `largest_width`
    (MAX_WIDTH_RATIO = 64 times its base width).
    """

    space: ChannelSpace
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.space):
            raise WidthsError(f"widths has {len(self.values)} values for {len(self.space)} groups")
        for group, width in zip(self.space, self.values, strict=True):
            if isinstance(width, bool) or not isinstance(width, int):
                raise WidthsError(f"width of group {group.name!r} must be an integer, got {width!r}")
            if width < 1:
                raise WidthsError(f"width of group {group.name!r} must be positive, got {width}")
            if width < group.min:
                raise WidthsError(f"width of group {group.name!r} is {width}, below its minimum {group.min}")
            if width % group.divisor:
                raise WidthsError(
                    f"width of group {group.name!r} is {width}, not a multiple of its divisor {group.divisor}"
                )
            if width > largest_width(group):
                raise WidthsError(
                    f"width of group {group.name!r} is {width}, above its maximum {largest_width(group)} "
                    f"({MAX_WIDTH_RATIO}x its base width {group.base})"
                )

    @classmethod
    def base(cls, space: ChannelSpace) -> Widths:
        """The model's own widths."""
        return cls(space, tuple(group.base for group in space))

    @classmethod
    def from_mapping(
        cls, space: ChannelSpace, mapping: Mapping[str, object], *, round: bool = False
    ) -> Widths:
        """Validate a user's mapping: exactly the space's names, positive integers (rounded if asked)."""
        missing = [name for name in space.names if name not in mapping]
        extra = [name for name in mapping if name not in space]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing groups {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
            if extra:
                parts.append(
                    f"unknown groups {', '.join(map(str, extra[:6]))}{' ...' if len(extra) > 6 else ''}"
                )
            raise WidthsError(
                f"widths do not match the model's channel groups: {'; '.join(parts)} "
                f"(the model has {len(space)} groups: {', '.join(space.names[:8])}{' ...' if len(space) > 8 else ''})"
            )
        values = []
        for group in space:
            raw = mapping[group.name]
            if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
                raise WidthsError(f"width of group {group.name!r} must be a number, got {raw!r}")
            raw = float(raw)
            if not math.isfinite(raw) or raw <= 0:
                raise WidthsError(f"width of group {group.name!r} must be positive, got {raw}")
            if round:
                values.append(round_width(raw, group))
            elif raw.is_integer():
                values.append(int(raw))
            else:
                raise WidthsError(f"width of group {group.name!r} must be an integer, got {raw}")
        return cls(space, tuple(values))

    @classmethod
    def coerce(cls, space: ChannelSpace, widths: Widths | Mapping[str, object] | None) -> Widths:
        """Widths valid for `space`: the base for None, as-is when already of this space, else validated."""
        if widths is None:
            return cls.base(space)
        if isinstance(widths, Widths) and widths.space == space:
            return widths
        return cls.from_mapping(space, dict(widths))

    @classmethod
    def from_ratios(cls, space: ChannelSpace, ratios: Mapping[str, float] | float) -> Widths:
        """Widths as multipliers of the base (one number for all groups, or one per group), rounded."""
        if isinstance(ratios, int | float):
            ratios = dict.fromkeys(space.names, float(ratios))
        scaled = {name: space[name].base * r if name in space else r for name, r in ratios.items()}
        return cls.from_mapping(space, scaled, round=True)

    def __getitem__(self, name: str) -> int:
        return self.values[self.space.index(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.space.names)

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"Widths({dict(self)})"

    def as_dict(self) -> dict[str, int]:
        """Plain dict, for JSON and Tune."""
        return dict(zip(self.space.names, self.values, strict=True))

    def scale(self, multiplier: float) -> Widths:
        """Every group times one multiplier, rounded to its divisor and clipped at its minimum."""
        if not multiplier > 0:
            raise WidthsError(f"width multiplier must be positive, got {multiplier}")
        return Widths(
            self.space,
            tuple(round_width(w * multiplier, g) for g, w in zip(self.space, self.values, strict=True)),
        )

    def clip(self, low: Mapping[str, int] | None = None, high: Mapping[str, int] | None = None) -> Widths:
        """Bound each group (by name); bounds are rounded to the divisor."""
        values = []
        for group, width in zip(self.space, self.values, strict=True):
            if low and group.name in low:
                width = max(width, round_width(low[group.name], group))
            if high and group.name in high:
                width = min(width, round_width(high[group.name], group))
            values.append(width)
        return Widths(self.space, tuple(values))

    def ratio_to_base(self) -> dict[str, float]:
        """Each group's width relative to the base model (the width profile users plot)."""
        return {g.name: w / g.base for g, w in zip(self.space, self.values, strict=True)}
