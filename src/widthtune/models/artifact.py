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
    """The raw JSON of a widths file: an artifact, or a plain {group: width} mapping."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WidthsError(f"widths file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WidthsError(f"widths file {str(path)!r} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise WidthsError(f"widths file {str(path)!r} must hold a JSON object")
    if data.get("format") == FORMAT and data.get("version", VERSION) > VERSION:
        raise WidthsError(
            f"widths file {str(path)!r} has version {data['version']}; this widthtune reads {VERSION}"
        )
    return data


def load_widths(path: str | Path, spec: ModelSpec | str | None = None) -> WidthsArtifact:
    """Read a widths file for `spec` (default: the model the artifact names), validated against its groups."""
    data = read_widths_file(path)
    is_artifact = data.get("format") == FORMAT
    if spec is None and not is_artifact:
        raise WidthsError(f"widths file {str(path)!r} is a plain mapping; name the model it belongs to")
    spec = parse_spec(spec if spec is not None else data["model"])
    mapping = data["widths"] if is_artifact else data
    if not isinstance(mapping, dict):
        raise WidthsError(f"widths file {str(path)!r}: 'widths' must be an object of group -> channels")
    for name, value in mapping.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise WidthsError(f"width of group {name!r} must be a finite number")
    widths = Widths.from_mapping(channel_space(spec), mapping)
    method = data.get("method", "manual") if is_artifact else "manual"
    provenance = data.get("provenance", {}) if is_artifact else {"source": str(path)}
    return make_artifact(spec, widths, method=method, provenance=provenance)
