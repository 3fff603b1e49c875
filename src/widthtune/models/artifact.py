"""The widths artifact: one versioned JSON file that every method writes and every consumer reads."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from widthtune.models.cost import Cost, CostModel
from widthtune.models.registry import canonical_spec, channel_space
from widthtune.models.spec import ModelSpec, parse_spec
from widthtune.models.widths import Widths, WidthsError

FORMAT = "widthtune.widths"
# the file name of a width vector saved beside whatever it describes (a trial, an export, a trained model)
WIDTHS_FILE = "widths.json"
VERSION = 1
# keys that make a widths file an artifact rather than a plain {group: width} mapping
ARTIFACT_KEYS = frozenset({"format", "version", "model", "widths"})


@dataclass(frozen=True)
class WidthsArtifact:
    """A width vector with the model it belongs to, its cost, the method that found it and how."""

    spec: ModelSpec
    widths: Widths
    cost: Cost
    method: str = "manual"
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The on-disk form (stable key order, readable diffs)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": str(self.spec),
            "method": self.method,
            "widths": self.widths.as_dict(),
            "base": {g.name: g.base for g in self.widths.space},
            "cost": self.cost.as_dict(),
            "provenance": dict(self.provenance),
        }

    def save(self, path: str | Path) -> Path:
        """Write the artifact; returns the absolute path."""
        path = Path(path).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def make_artifact(
    spec: ModelSpec | str,
    widths: Widths | Mapping[str, int],
    *,
    method: str = "manual",
    provenance: Mapping[str, Any] | None = None,
    cost_model: CostModel | None = None,
) -> WidthsArtifact:
    """Validate widths against the spec's space and price them."""
    spec = canonical_spec(spec)
    cost_model = cost_model or CostModel.from_spec(spec)
    widths = Widths.coerce(cost_model.space, widths)
    return WidthsArtifact(spec, widths, cost_model.evaluate(widths), method, dict(provenance or {}))


def read_widths_file(path: str | Path) -> dict[str, Any]:
    """The raw JSON of a widths file: an artifact, or a plain {group: width} mapping; damage is one clear error."""
    path = Path(path).expanduser()
    where = f"widths file {str(path)!r}"
    if not path.exists():
        raise WidthsError(f"{where} does not exist")
    if not path.is_file():
        raise WidthsError(f"{where} is not a file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WidthsError(f"{where} is not valid JSON ({error})") from None
    except OSError as error:
        raise WidthsError(f"{where} cannot be read ({error.strerror or error})") from None
    if not isinstance(data, dict):
        raise WidthsError(f"{where} must hold a JSON object, not {type(data).__name__}")
    if ARTIFACT_KEYS & data.keys():
        if data.get("format", FORMAT) != FORMAT:
            raise WidthsError(f"{where}: 'format' is {data['format']!r}, not {FORMAT!r}")
        version = data.get("version", VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            raise WidthsError(f"{where}: 'version' must be an integer such as {VERSION}, got {version!r}")
        if version > VERSION:
            raise WidthsError(f"{where} has version {version}; this widthtune reads {VERSION}")
        if "widths" not in data:
            raise WidthsError(f"{where} has no 'widths' key (an object of group -> channels)")
        if "model" in data and not isinstance(data["model"], str):
            raise WidthsError(f"{where}: 'model' must be a spec string, got {data['model']!r}")
    return data


def load_widths(path: str | Path, spec: ModelSpec | str | None = None) -> WidthsArtifact:
    """Read a widths file for `spec` (default: the model the artifact names), validated against its groups."""
    data = read_widths_file(path)
    where = f"widths file {str(path)!r}"
    is_artifact = bool(ARTIFACT_KEYS & data.keys())
    if spec is None and not is_artifact:
        raise WidthsError(f"{where} is a plain mapping; name the model it belongs to")
    if spec is None and "model" not in data:
        raise WidthsError(f"{where} names no 'model'; name the model it belongs to")
    spec = parse_spec(spec if spec is not None else data["model"])
    mapping = data["widths"] if is_artifact else data
    if not isinstance(mapping, dict):
        raise WidthsError(f"{where}: 'widths' must be an object of group -> channels")
    for name, value in mapping.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise WidthsError(f"width of group {name!r} must be a finite number")
    try:
        widths = Widths.from_mapping(channel_space(spec), mapping)
    except WidthsError as error:
        raise WidthsError(f"{where}: {error}") from None
    method = data.get("method", "manual") if is_artifact else "manual"
    provenance = data.get("provenance", {}) if is_artifact else {"source": str(path)}
    if not isinstance(provenance, dict):
        raise WidthsError(f"{where}: 'provenance' must be an object, got {type(provenance).__name__}")
    return make_artifact(spec, widths, method=method, provenance=provenance)
