"""Channel groups: the sets of (module, dimension) pairs that must keep one size, and their ordered space."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

MemberKind = Literal["out", "in", "param"]


@dataclass(frozen=True)
class Member:
    """One tensor dimension owned by a group: a module's output or input channels, or a raw parameter's dim."""

    path: str
    kind: MemberKind = "out"
    dim: int = 0


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that change size together; stage/block/role locate it so depths can be mapped onto each other."""

    name: str
    base: int
    members: tuple[Member, ...]
    min: int = 1
    divisor: int = 1
    stage: int | None = None
    block: int | None = None
    role: str = "conv"

    def __post_init__(self) -> None:
        if self.base < 1 or self.min < 1 or self.divisor < 1:
            raise ValueError(f"group {self.name}: base, min and divisor must be positive")


@dataclass(frozen=True)
class Concatenation:
    """A module dimension that holds several groups side by side, e.g. the consumer of a `torch.cat`.

    `parts` lists, in channel order, group names and (as integers) runs of channels no group owns; a name
    may repeat (the tied pieces of a chunk). Its width is the parts' sum; each part keeps its offset.
    `shuffled` marks channels a channel shuffle has permuted: widths follow, individual channels do not.
    """

    path: str
    kind: MemberKind
    parts: tuple[str | int, ...]
    dim: int = 0
    shuffled: bool = False


Part = tuple[int | None, int]  # (group index, or None for channels no group owns; their count at the base)


@dataclass(frozen=True)
class ChannelSpace:
    """The ordered channel groups of one model: what every width vector is indexed by."""

    groups: tuple[ChannelGroup, ...]
    concats: tuple[Concatenation, ...] = ()
    _index: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        index = {group.name: i for i, group in enumerate(self.groups)}
        if len(index) != len(self.groups):
            raise ValueError("channel group names must be unique")
        for concat in self.concats:
            unknown = [p for p in concat.parts if isinstance(p, str) and p not in index]
            if unknown:
                raise ValueError(f"concatenation at {concat.path!r} names unknown groups {unknown}")
        object.__setattr__(self, "_index", index)

    @property
    def names(self) -> tuple[str, ...]:
        """Group names in order."""
        return tuple(group.name for group in self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[ChannelGroup]:
        return iter(self.groups)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> ChannelGroup:
        return self.groups[self.index(name)]

    def index(self, name: str) -> int:
        """Position of a group, with an error that lists the valid names."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"no channel group {name!r}; groups are: {', '.join(self.names)}") from None

    def rebased(self, widths: Mapping[str, int]) -> ChannelSpace:
        """The same groups with `widths` as their base: the space channel indices of a model built at `widths`
        range over (a supernet's or a widened hypernetwork's)."""
        return ChannelSpace(tuple(replace(g, base=int(widths[g.name])) for g in self.groups), self.concats)

    def layouts(self) -> dict[tuple[str, str], tuple[Part, ...]]:
        """(module path, kind) -> its channels as parts, for whole members and concatenations alike."""
        layouts: dict[tuple[str, str], tuple[Part, ...]] = {
            key: ((group, self.groups[group].base),) for key, group in self.member_groups().items()
        }
        for concat in self.concats:
            layouts[(concat.path, concat.kind)] = tuple(
                (self._index[p], self[p].base) if isinstance(p, str) else (None, p) for p in concat.parts
            )
        return layouts

    def member_groups(self) -> dict[tuple[str, str], int]:
        """(module path, kind) -> group index, for modules whose channels all belong to one group."""
        owners: dict[tuple[str, str], int] = {}
        for i, group in enumerate(self.groups):
            for member in group.members:
                owners[(member.path, member.kind)] = i
        return owners
