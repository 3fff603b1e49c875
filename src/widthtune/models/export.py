"""Export a searched architecture as a deployable TorchScript or ONNX file, with its widths embedded."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import torch

from widthtune.models.artifact import WIDTHS_FILE, WidthsArtifact
from widthtune.models.registry import deploy, input_shape, materialize

FORMATS = ("torchscript", "onnx")


def export_model(artifact: WidthsArtifact, format: str, out: str | Path, *, seed: int | None = 0) -> Path:
    """Materialise the artifact's model (fresh weights) in its shipping form and write it, widths JSON inside."""
    if format not in FORMATS:
        raise ValueError(f"export format {format!r} is not one of: {', '.join(FORMATS)}")
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    model = deploy(artifact.spec, materialize(artifact.spec, artifact.widths, seed=seed)).eval()
    example = torch.zeros(input_shape(artifact.spec))
    metadata = json.dumps(artifact.to_json())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if format == "torchscript":
            traced = torch.jit.trace(model, example)
            torch.jit.save(traced, str(out), _extra_files={WIDTHS_FILE: metadata})
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
            program.save(str(out))
    return out
