"""Network Slimming's channel selection: a reader's own subset of the channels in front of it, by index."""

from __future__ import annotations

import torch
from torch import nn


class ChannelSelection(nn.Module):
    """Passes on the channels `indexes` names, in that order (a pruned reader keeps what its BN needs)."""

    def __init__(self, indexes: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("indexes", indexes.to(torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.indexes)


def first_channels(selected: int, available: int, name: str, family: str) -> ChannelSelection:
    """A selection of the first `selected` of `available` channels, refused when it would take more."""
    if selected > available:
        raise ValueError(
            f"{family}: {name} is {selected} but what it selects from has {available} channels; "
            "a selection takes at most the channels it reads"
        )
    return ChannelSelection(torch.arange(selected))
