"""Export a searched architecture as a deployable TorchScript or ONNX file, with its widths embedded."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from widthtune.models.artifact import WIDTHS_FILE, WidthsArtifact
from widthtune.models.registry import deploy, input_shape, materialize

FORMATS = ("torchscript", "onnx")


class ExportError(ValueError):
    """An export cannot be written where asked, or its weights do not fit the model; the message says which."""


def check_output(out: str | Path) -> Path:
    """The absolute output file, refused before anything is written if it is a folder or lies under a file."""
    out = Path(out).expanduser().absolute()
    if out.is_dir():
        raise ExportError(f"output {str(out)!r} is a folder; name a file, e.g. {out / 'model.pt'}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(
                    f"output {str(out)!r} lies under {str(parent)!r}, which is a file, not a folder"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ExportError(f"output {str(out)!r}: folder {str(parent)!r} is not writable")
            break
    return out


def export_model(
    artifact: WidthsArtifact,
    format: str,
    out: str | Path,
    *,
    seed: int | None = 0,
    weights: Mapping[str, torch.Tensor] | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write the artifact's model with trained `weights` (or fresh ones from `seed`); the widths JSON travels inside.

    The embedded JSON says which: `weights` is `{"kind": "trained", **source}` or `{"kind": "random", "seed": seed}`.
    Nothing is written unless the whole export succeeds.
    """
    if format not in FORMATS:
        raise ExportError(f"export format {format!r} is not one of: {', '.join(FORMATS)}")
    out = check_output(out)
    model = materialize(artifact.spec, artifact.widths, seed=seed)
    if weights is not None:
        try:
            model.load_state_dict(weights)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[1:2] or [str(error)]
            raise ExportError(
                f"the weights do not fit {artifact.spec} at these widths: {first[0].strip()}"
            ) from None
    model = deploy(artifact.spec, model).eval()  # the form that ships (RepVGG merged)
    kind = (
        {"kind": "trained", **dict(source or {})} if weights is not None else {"kind": "random", "seed": seed}
    )
    metadata = json.dumps({**artifact.to_json(), "weights": kind}, default=str)
    example = torch.zeros(input_shape(artifact.spec))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if format == "torchscript":
                traced = torch.jit.trace(model, example)
                torch.jit.save(traced, str(partial), _extra_files={WIDTHS_FILE: metadata})
            else:
                with contextlib.redirect_stdout(io.StringIO()):
                    program = torch.onnx.export(
                        model,
                        (example,),
                        dynamo=True,
                        verbose=False,
                        dynamic_shapes=({0: torch.export.Dim("batch")},),
                    )
                program.model.metadata_props["widthtune.widths"] = metadata
                program.save(str(partial))
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out
