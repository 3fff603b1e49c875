"""Mask sites: the module outputs where a per-channel {0, 1} mask of a channel group removes those channels.

A channel masked at every site of its group is zero wherever the group's channels flow, so the network
computes what the network sliced to the kept channels computes (see `models.inherit`):

- a group with norms: each norm that writes it (a residual stream: the stem's, every block's last and every
  projection's), as `models.inherit.mask_channels` zeroes their gamma and beta; identity adds and ReLUs keep
  zero at zero;
- a group without norms: each conv or linear that writes it;
- a RepVGG block's group: the block's output, after its ReLU, so one mask removes the channel from the 3x3,
  the 1x1 and the identity branch at once (PaS's post-block mask), and a masked channel still passes its
  unmasked value backward (a mask before the ReLU would cut its gradient at ReLU'(0) = 0).
"""

from __future__ import annotations

from torch import nn

from widthtune.models.inherit import NORMS
from widthtune.models.repvgg import RepVGGBlock
from widthtune.models.space import ChannelSpace


def mask_sites(
    model: nn.Module, space: ChannelSpace, exclude: frozenset[str] = frozenset()
) -> dict[str, tuple[str, ...]]:
    """Per group (those in `exclude` left out), the paths of the modules whose outputs its mask multiplies."""
    modules = dict(model.named_modules())
    sites: dict[str, tuple[str, ...]] = {}
    for group in space:
        if group.name in exclude:
            continue
        writers = [m.path for m in group.members if m.kind == "out" and m.path in modules]
        parents = {path.rpartition(".")[0] for path in writers}
        if len(parents) == 1 and isinstance(modules.get(next(iter(parents))), RepVGGBlock):
            sites[group.name] = (next(iter(parents)),)
            continue
        norms = tuple(path for path in writers if isinstance(modules[path], NORMS))
        convs = tuple(path for path in writers if isinstance(modules[path], nn.Conv2d | nn.Linear))
        if norms or convs:
            sites[group.name] = norms or convs
    return sites
