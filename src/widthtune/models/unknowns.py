"""Width unknowns: channel counts a trace equates, splits and pins, with their traced sizes.

An unknown is one run of channels whose width a group will set. Equating two layouts (tuples of unknowns
side by side) aligns them by traced size and splits an unknown where the other side has a boundary; a
`Shuffled` block is channels a channel shuffle permuted, whose total width is known but whose order is not.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass


class UnsupportedModelError(ValueError):
    """The model moves channels in a way width vectors cannot express; the message names the layer and op."""


@dataclass(frozen=True)
class Shuffled:
    """A block of channels permuted by a channel shuffle: its width is its parts' total, its order is lost."""

    parts: tuple[Part, ...]


Part = int | Shuffled  # an unknown's id, or a shuffled block of parts
Layout = tuple[Part, ...]


@dataclass
class _Unknown:
    base: int
    parent: int | None = None  # equal to another unknown
    parts: Layout | None = None  # split into (or defined as) these parts
    fixed: bool = False


class Unknowns:
    """Width unknowns with their traced sizes, equated (union-find) and split as the trace requires."""

    def __init__(self) -> None:
        self._items: list[_Unknown] = []

    def new(self, base: int, *, fixed: bool = False) -> int:
        self._items.append(_Unknown(base, fixed=fixed))
        return len(self._items) - 1

    def find(self, var: int) -> int:
        root = var
        while self._items[root].parent is not None:
            root = self._items[root].parent
        while self._items[var].parent is not None:
            self._items[var].parent, var = root, self._items[var].parent
        return root

    def is_fixed(self, var: int) -> bool:
        return self._items[self.find(var)].fixed

    def base(self, part: Part) -> int:
        if isinstance(part, Shuffled):
            return sum(self.base(p) for p in part.parts)
        return self._items[self.find(part)].base

    def total(self, layout: Layout) -> int:
        return sum(self.base(p) for p in layout)

    def expand(self, layout: Layout) -> Layout:
        """The layout in unknowns that are neither equated to nor split into others."""
        out: list[Part] = []
        for part in layout:
            if isinstance(part, Shuffled):
                out.append(Shuffled(self.expand(part.parts)))
                continue
            root = self.find(part)
            parts = self._items[root].parts
            out.extend(self.expand(parts) if parts is not None else (root,))
        return tuple(out)

    def leaves(self, layout: Layout) -> Iterator[int]:
        for part in self.expand(layout):
            if isinstance(part, Shuffled):
                yield from self.leaves(part.parts)
            else:
                yield part

    def fix(self, layout: Layout) -> None:
        """Pin every unknown of a layout at its traced size."""
        for var in self.leaves(layout):
            self._items[var].fixed = True

    def _split(self, var: int, at: int) -> tuple[int, int]:
        item = self._items[var]
        head, tail = self.new(at, fixed=item.fixed), self.new(item.base - at, fixed=item.fixed)
        item.parts = (head, tail)
        return head, tail

    def _define(self, var: int, layout: Layout, where: str) -> None:
        if var in set(self.leaves(layout)):
            raise UnsupportedModelError(f"{where}: combines channels with a shuffled copy of themselves")
        self._items[var].parts = layout
        if self._items[var].fixed:
            self.fix(layout)

    def _equate(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self._items[b].parent = a
            self._items[a].fixed = self._items[a].fixed or self._items[b].fixed

    def unify(self, left: Layout, right: Layout, where: str) -> None:
        """Make two layouts of one traced size equal, part by part, splitting unknowns at the other's boundaries."""
        if self.total(left) != self.total(right):
            raise UnsupportedModelError(
                f"{where}: couples {self.total(left)} channels with {self.total(right)}"
            )
        a, b = deque(self.expand(left)), deque(self.expand(right))
        while a and b:
            x, y = self._next(a), self._next(b)
            if x is None or y is None:
                break
            if isinstance(x, Shuffled) or isinstance(y, Shuffled):
                self._unify_shuffled(x, y, a, b, where)
                continue
            bx, by = self.base(x), self.base(y)
            if bx == by:
                self._equate(x, y)
            elif bx < by:
                head, tail = self._split(y, bx)
                self._equate(x, head)
                b.appendleft(tail)
            else:
                head, tail = self._split(x, by)
                self._equate(head, y)
                a.appendleft(tail)

    def _next(self, queue: deque[Part]) -> Part | None:
        """The next part, re-expanded: an earlier step of the same unify may have split it."""
        while queue:
            part = queue.popleft()
            if isinstance(part, Shuffled):
                return part
            root = self.find(part)
            parts = self._items[root].parts
            if parts is None:
                return root
            queue.extendleft(reversed(parts))
        return None

    def _unify_shuffled(self, x: Part, y: Part, a: deque, b: deque, where: str) -> None:
        if isinstance(x, Shuffled) and isinstance(y, Shuffled) and self.base(x) == self.base(y):
            self.unify(x.parts, y.parts, where)
            return
        block, var, rest = (x, y, b) if isinstance(x, Shuffled) else (y, x, a)
        if isinstance(var, Shuffled) or self.base(var) < self.base(block):
            raise UnsupportedModelError(f"{where}: shuffled channels meet channels from a different layout")
        if self.base(var) > self.base(block):
            head, tail = self._split(var, self.base(block))
            rest.appendleft(tail)
            var = head
        self._define(var, (block,), where)

    def cut(self, layout: Layout, sizes: list[int], where: str) -> list[Layout]:
        """Consecutive pieces of a layout with these traced sizes (unknowns split at the boundaries)."""
        queue = deque(self.expand(layout))
        pieces: list[Layout] = []
        for size in sizes:
            piece: list[Part] = []
            while size > 0:
                part = self._next(queue)
                if part is None:
                    raise UnsupportedModelError(f"{where}: takes more channels than the tensor has")
                width = self.base(part)
                if width > size:
                    if isinstance(part, Shuffled):
                        raise UnsupportedModelError(
                            f"{where}: cuts through shuffled channels, so no piece has a fixed set of them"
                        )
                    head, tail = self._split(part, size)
                    queue.appendleft(tail)
                    part, width = head, size
                piece.append(part)
                size -= width
            pieces.append(tuple(piece))
        return pieces

    def counts(self, layout: Layout) -> tuple[dict[int, int], int]:
        """How often each free unknown occurs in a layout, and its pinned channels."""
        counts: dict[int, int] = {}
        pinned = 0
        for var in self.leaves(layout):
            if self._items[var].fixed:
                pinned += self._items[var].base
            else:
                counts[var] = counts.get(var, 0) + 1
        return counts, pinned
