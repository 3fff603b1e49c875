"""Model specs: the one-line text a user writes to name a model (`family:key=value,...`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class SpecError(ValueError):
    """A model spec names an unknown family, key or value; the message says what is allowed."""


@dataclass(frozen=True)
class ModelSpec:
    """A model named by family, an optional target (torchvision model name, python factory) and options."""

    family: str
    target: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        """Options as a dict, for passing on."""
        return dict(self.options)

    def with_options(self, **changes: Any) -> ModelSpec:
        """Same model with some options replaced (used by proxies and tests)."""
        merged = {**self.kwargs, **changes}
        return ModelSpec(self.family, self.target, tuple(sorted(merged.items())))

    def __str__(self) -> str:
        parts = [self.target] if self.target else []
        parts += [f"{key}={_format_value(value)}" for key, value in self.options]
        return f"{self.family}:{','.join(parts)}" if parts else self.family


def parse_value(text: str) -> Any:
    """Read an option value the way a user means it: int, float, bool, None, else string."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes"):
        return True
    if lowered in ("false", "no"):
        return False
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def _format_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_spec(text: str | ModelSpec | Mapping[str, Any]) -> ModelSpec:
    """Turn `family:key=value,...`, `torchvision:NAME[,k=v]` or `python:FILE:FACTORY[,k=v]` into a ModelSpec."""
    if isinstance(text, ModelSpec):
        return text
    if isinstance(text, Mapping):
        options = dict(text)
        family = options.pop("family", None)
        if not family:
            raise SpecError("model: a mapping spec needs a 'family' key")
        target = options.pop("target", None)
        return ModelSpec(str(family), target, tuple(sorted(options.items())))
    text = text.strip()
    if not text:
        raise SpecError("model spec is empty; write e.g. 'resnet_cifar:depth=56' or 'torchvision:resnet18'")
    family, has_rest, rest = text.partition(":")
    family = family.strip()
    target = None
    if family == "python":
        # python:path/to/file.py:factory[,k=v,...] -- the factory is the part after the last ':' before options.
        head, has_options, tail = rest.partition(",")
        path, sep, factory = head.rpartition(":")
        if not sep or not path.strip() or not factory.strip():
            raise SpecError(
                f"model spec {text!r}: write python:<file.py or module>:<callable>[,key=value,...]"
            )
        target, rest = f"{path.strip()}:{factory.strip()}", tail
    elif family == "torchvision":
        head, has_options, rest = rest.partition(",")
        if not head.strip():
            raise SpecError(f"model spec {text!r}: write torchvision:<model name>, e.g. torchvision:resnet18")
        target = head.strip()
    else:
        # `family:` alone is the family at its defaults; after that, every item must be key=value
        has_options = has_rest and rest.strip()
    options: dict[str, Any] = {}
    for number, item in enumerate((part.strip() for part in rest.split(",")) if has_options else (), 1):
        if not item:
            raise SpecError(
                f"model spec {text!r}: option {number} is empty (a stray ','); "
                "separate key=value options by single commas"
            )
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"model spec {text!r}: option {item!r} is not key=value")
        if key in options:
            raise SpecError(f"model spec {text!r}: option {key!r} is given twice")
        options[key] = parse_value(value)
    return ModelSpec(family, target, tuple(sorted(options.items())))
