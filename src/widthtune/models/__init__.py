"""Model families over channel groups, width vectors, materialisation, and the arithmetic cost model."""

from widthtune.models.registry import (
    FAMILIES,
    canonical_spec,
    channel_space,
    create_model,
    deploy,
    input_shape,
    materialize,
    resolve_options,
)
from widthtune.models.space import ChannelGroup, ChannelSpace, Member
from widthtune.models.spec import ModelSpec, SpecError, parse_spec
from widthtune.models.widths import Widths, WidthsError

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
