"""Reading a config: YAML, `--set KEY=VALUE` overrides, the schema, then the owners' checks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from widthtune.platform.config.checks import aligned, check
from widthtune.platform.config.schema import ConfigError, ExperimentConfig
from widthtune.search_spaces.domains import DomainError


def _format_pydantic(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"{loc}: unknown field; remove it or check its spelling"
    if first["type"] == "missing":
        return f"{loc}: required field is missing"
    return f"{loc}: {first.get('input')!r} is not allowed ({first['msg'][0].lower()}{first['msg'][1:]})"


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=value` (value parsed as YAML) into a copy of the raw config."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"--set {item!r}: write KEY=VALUE with a dotted KEY, e.g. --set train.epochs=5")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: {text!r} is not a YAML value") from None
        parts = key.strip().split(".")
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if isinstance(child, list):
                raise ConfigError(
                    f"--set {key}: cannot index into a list; set the whole list, e.g. {part}=[...]"
                )
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override, validate; every problem is a ConfigError naming the field."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of fields")
    return validate_config(apply_overrides(raw, overrides or []))


def validate_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Pydantic validation, then the checks that need models, data and methods."""
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_pydantic(error)) from None
    try:
        config = aligned(config)
        check(config)
    except (DomainError, ValueError, KeyError, TypeError) as error:
        if isinstance(error, ConfigError):
            raise
        message = error.args[0] if error.args else str(error)
        raise ConfigError(str(message)) from None
    return config
