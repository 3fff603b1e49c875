"""Hyperparameter domains: a config value is a constant or one of five spaces, usable by Tune and by Optuna."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DOMAIN_KINDS = ("uniform", "loguniform", "randint", "choice", "grid")


class DomainError(ValueError):
    """A space in the config is malformed; the message names the field."""


@dataclass(frozen=True)
class Domain:
    """One searchable hyperparameter: `uniform`/`loguniform` [low, high], `randint` [low, high), `choice`, `grid`."""

    kind: str
    values: tuple[Any, ...]

    def to_tune(self) -> Any:
        """The Tune search-space object (grid becomes `grid_search`)."""
        from ray import tune

        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        if self.kind == "randint":
            return tune.randint(*self.values)
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return tune.grid_search(list(self.values))

    def suggest(self, trial: Any, name: str) -> Any:
        """Sample from an Optuna trial, define-by-run (grid and choice both become categorical)."""
        if self.kind == "uniform":
            return trial.suggest_float(name, *self.values)
        if self.kind == "loguniform":
            return trial.suggest_float(name, *self.values, log=True)
        if self.kind == "randint":
            return trial.suggest_int(name, self.values[0], self.values[1] - 1)
        return trial.suggest_categorical(name, list(self.values))

    def candidates(self) -> tuple[Any, ...]:
        """Values that bound the domain, for validating it before anything starts."""
        if self.kind in ("choice", "grid"):
            return self.values
        if self.kind == "randint":
            return (self.values[0], self.values[1] - 1)
        return self.values


def is_space(value: Any) -> bool:
    """A one-key mapping whose key is a domain kind."""
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in DOMAIN_KINDS


def parse_domain(field: str, value: Mapping[str, Any]) -> Domain:
    """Validate `{kind: args}`; errors name the field and say what is allowed."""
    ((kind, args),) = value.items()
    if not isinstance(args, list | tuple) or not args:
        raise DomainError(f"{field}: {{{kind}: {args!r}}} needs a non-empty list")
    if kind in ("choice", "grid"):
        return Domain(kind, tuple(args))
    if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        raise DomainError(f"{field}: {{{kind}: {list(args)!r}}} needs two numbers [low, high]")
    low, high = args
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise DomainError(f"{field}: {{{kind}: {list(args)!r}}} needs low < high")
    if kind == "loguniform" and low <= 0:
        raise DomainError(f"{field}: {{loguniform: {list(args)!r}}} needs low > 0")
    if kind == "randint":
        if not (isinstance(low, int) and isinstance(high, int)):
            raise DomainError(f"{field}: {{randint: {list(args)!r}}} needs two integers [low, high)")
        return Domain(kind, (low, high))
    return Domain(kind, (float(low), float(high)))


def split_spaces(values: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Domain]]:
    """Flatten a nested mapping into dotted constants and dotted domains."""
    constants: dict[str, Any] = {}
    domains: dict[str, Domain] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if is_space(value):
            domains[name] = parse_domain(name, value)
        elif isinstance(value, Mapping):
            inner_constants, inner_domains = split_spaces(value, name)
            constants.update(inner_constants)
            domains.update(inner_domains)
        else:
            constants[name] = value
    return constants, domains


def unflatten(flat: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The nested mapping under `prefix.` of a dotted flat mapping."""
    nested: dict[str, Any] = {}
    start = f"{prefix}."
    for key, value in flat.items():
        if not key.startswith(start):
            continue
        parts = key[len(start) :].split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested
