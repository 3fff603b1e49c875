"""Data-parallel training (DDP) pieces the loop uses when it is one of several Ray Train workers: which share of
every epoch a worker trains on, and the sums that make an epoch's figures those of the whole batch.

One rule shares an epoch, for data in memory and streamed alike: every rank draws the same seeded order, cut
into batches of the per-worker size; batch k is rank k % world_size's, and every rank takes the same number of
steps (the batches past the last whole round are left out). In memory the rank skips the others' batches
(`ShardedBatches`); streamed, it asks its reader only for its own files (`ShardedOrder`), so each file of the
epoch is decoded by one worker, as a `DistributedSampler` would have it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Shard:
    """This worker's place among the data-parallel workers of one trial."""

    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size} workers")

    @property
    def parallel(self) -> bool:
        """Whether there is more than one worker."""
        return self.world_size > 1

    def steps(self, batches: int) -> int:
        """Steps each worker takes in an epoch of `batches` batches (whole rounds only)."""
        return batches // self.world_size

    def own(self, batches: int) -> range:
        """The indices of this worker's batches in an epoch of `batches` batches."""
        return range(self.rank, self.steps(batches) * self.world_size, self.world_size)


class ShardedBatches:
    """Every `world_size`-th batch of an epoch, from `rank`: each worker draws the same seeded order (the
    generator is seeded alike on every rank), so the shards are disjoint and together one epoch; every worker
    takes the same number of steps (the few batches past a whole round are left out)."""

    def __init__(self, batches, shard: Shard) -> None:
        self.batches = batches
        self.shard = shard

    @property
    def generator(self) -> torch.Generator:
        """The inner batches' generator (what a checkpoint saves)."""
        return self.batches.generator

    def __len__(self) -> int:
        return self.shard.steps(len(self.batches))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        own = self.shard.own(len(self.batches))
        for index, batch in enumerate(self.batches):
            # past the last own batch the epoch is drained, so the generator ends where a single process's would
            if index in own:
                yield batch


class ShardedOrder(Sampler):
    """This worker's keys of an epoch's order: the whole order is drawn (alike on every rank, from the same
    seeded generator), cut into batches of `batch_size`, and only this worker's batches are handed to the
    reader, in order, so a DataLoader over it batches them exactly as they were cut."""

    def __init__(self, order: Sampler, batch_size: int, drop_last: bool, shard: Shard) -> None:
        self.order = order
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.shard = shard

    def _batches(self, count: int) -> int:
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def _own_keys(self, count: int) -> Iterator[slice]:
        for index in self.shard.own(self._batches(count)):
            yield slice(index * self.batch_size, min(count, (index + 1) * self.batch_size))

    def __len__(self) -> int:
        return sum(part.stop - part.start for part in self._own_keys(len(self.order)))

    def __iter__(self) -> Iterator[Any]:
        keys = list(self.order)  # draws the epoch's whole order and seeds now, as a single process would
        return iter([key for part in self._own_keys(len(keys)) for key in keys[part]])


def all_sum(*values: Tensor) -> tuple[Tensor, ...]:
    """The values summed over every worker (one collective call)."""
    import torch.distributed as dist

    stacked = torch.stack([v.to(torch.float64) for v in values])
    dist.all_reduce(stacked)
    return tuple(stacked.unbind())
