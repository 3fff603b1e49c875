"""The method registry: name -> Method, the one place a new method is added."""

from __future__ import annotations

from widthtune.trainables import control, direct, given, l1_filter, lwdna, random_widths, slimming, uniform
from widthtune.trainables.task import Method

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        uniform.METHOD,
        random_widths.METHOD,
        direct.METHOD,
        given.METHOD,
        lwdna.METHOD,
        slimming.METHOD,
        l1_filter.METHOD,
        control.METHOD,
    )
}


def get_method(name: str) -> Method:
    """The registered method, or an error listing the ones there are."""
    if name not in METHODS:
        raise ValueError(f"method.name: {name!r} is not a method; choose one of: {', '.join(METHODS)}")
    return METHODS[name]
