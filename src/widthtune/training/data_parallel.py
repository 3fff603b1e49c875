"""Data-parallel training (DDP) pieces the loop uses when it is one of several Ray Train workers: which share of
every epoch a worker trains on, and the sums that make an epoch's figures those of the whole batch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


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
        return len(self.batches) // self.shard.world_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        steps = len(self)
        taken = 0
        for index, batch in enumerate(self.batches):
            if taken == steps:
                continue  # drain the epoch, so the generator ends where a single process's would
            if index % self.shard.world_size == self.shard.rank:
                taken += 1
                yield batch


def all_sum(*values: Tensor) -> tuple[Tensor, ...]:
    """The values summed over every worker (one collective call)."""
    import torch.distributed as dist

    stacked = torch.stack([v.to(torch.float64) for v in values])
    dist.all_reduce(stacked)
    return tuple(stacked.unbind())
