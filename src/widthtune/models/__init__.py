"""Model families over channel groups, width vectors, materialisation, and the arithmetic cost model.

Specs, channel spaces, widths and the family catalogue import no torch; the registry (which does) loads on
first use of one of its names, so `widthtune --help` and `widthtune models` answer without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from widthtune.models.space import ChannelGroup, ChannelSpace, Member
from widthtune.models.spec import ModelSpec, SpecError, parse_spec
from widthtune.models.widths import Widths, WidthsError

# names served by widthtune.models.registry, imported when first asked for
_REGISTRY_NAMES = frozenset(
    {
        "FAMILIES",
        "canonical_spec",
        "channel_space",
        "create_model",
        "deploy",
        "input_shape",
        "materialize",
        "resolve_options",
    }
)


def __getattr__(name: str) -> Any:
    if name in _REGISTRY_NAMES:
        return getattr(importlib.import_module("widthtune.models.registry"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FAMILIES",
    "ChannelGroup",
    "ChannelSpace",
    "Member",
    "ModelSpec",
    "SpecError",
    "Widths",
    "WidthsError",
    "canonical_spec",
    "channel_space",
    "create_model",
    "deploy",
    "input_shape",
    "materialize",
    "parse_spec",
    "resolve_options",
]
