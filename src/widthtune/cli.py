"""The `widthtune` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from widthtune.models import FAMILIES, canonical_spec, channel_space
from widthtune.models.artifact import load_widths, make_artifact
from widthtune.models.cost import CONVENTIONS
from widthtune.models.dependency import UnsupportedModelError
from widthtune.models.export import FORMATS, export_model
from widthtune.models.match import CostTargetError
from widthtune.models.spec import SpecError
from widthtune.models.surgery import SurgeryError
from widthtune.models.widths import Widths, WidthsError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Search the layer-wise widths of convolutional networks.",
)
# Errors that mean "the input is wrong", reported as one line with exit status 2.
USER_ERRORS = (
    SpecError,
    WidthsError,
    SurgeryError,
    CostTargetError,
    UnsupportedModelError,
    FileNotFoundError,
)

SpecArgument = Annotated[
    str,
    typer.Argument(
        help="family:key=value,... (e.g. resnet_cifar:depth=56,shortcut=C), torchvision:NAME or python:FILE.py:FACTORY"
    ),
]


class InputError(ValueError):
    """A command-line value outside what is allowed."""


def _artifact(spec: str, widths: Path | None):
    if widths is None:
        space = channel_space(spec)
        return make_artifact(spec, Widths.base(space), method="base")
    return load_widths(widths, spec)


@app.command()
def flops(
    spec: SpecArgument,
    widths: Annotated[
        Path | None, typer.Option(help="widths JSON (artifact or {group: width}); default: base")
    ] = None,
    convention: Annotated[str, typer.Option(help="macs (default), flops or lwdna")] = "macs",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Cost (MACs, FLOPs, LW-DNA FLOPs, params) and channel groups of a model at some widths."""
    if convention not in CONVENTIONS or convention == "params":
        raise InputError(f"--convention {convention!r} is not one of: macs, flops, lwdna")
    artifact = _artifact(spec, widths)
    cost = artifact.cost
    groups = [
        {"name": g.name, "base": g.base, "width": w}
        for g, w in zip(artifact.widths.space, artifact.widths.values, strict=True)
    ]
    if as_json:
        print(
            json.dumps(
                {
                    "model": str(artifact.spec),
                    "convention": convention,
                    "cost": cost[convention],
                    **cost.as_dict(),
                    "groups": groups,
                },
                indent=2,
            )
        )
        return
    console = Console()
    console.print(f"[bold]{artifact.spec}[/bold]")
    console.print(
        f"{convention}: {cost[convention]:,}   (macs {cost.macs:,} | flops {cost.flops:,} | "
        f"lwdna {cost.lwdna:,} | params {cost.params:,})"
    )
    table = Table("group", "base", "width", "ratio")
    for g in groups:
        table.add_row(g["name"], str(g["base"]), str(g["width"]), f"{g['width'] / g['base']:.3f}")
    console.print(table)


@app.command()
def export(
    spec: SpecArgument,
    widths: Annotated[Path, typer.Option(help="widths JSON (artifact or {group: width})")],
    format: Annotated[str, typer.Option("--format", help="torchscript or onnx")],
    out: Annotated[Path, typer.Option(help="output file")],
    seed: Annotated[int, typer.Option(help="seed of the fresh weights")] = 0,
) -> None:
    """Write the architecture at these widths as a deployable TorchScript or ONNX file."""
    if format not in FORMATS:
        raise InputError(f"--format {format!r} is not one of: {', '.join(FORMATS)}")
    artifact = load_widths(widths, spec)
    path = export_model(artifact, format, out, seed=seed)
    print(f"wrote {path} ({format}, {artifact.cost.macs:,} MACs, {artifact.cost.params:,} params)")


@app.command()
def models() -> None:
    """List model families and their options."""
    table = Table("family", "what", "options (defaults)")
    for family in FAMILIES.values():
        options = ", ".join(f"{k}={v}" for k, v in family.defaults.items())
        table.add_row(
            family.name, family.summary, options + (", + factory kwargs" if family.open_options else "")
        )
    Console().print(table)


@app.command()
def spec(spec: SpecArgument) -> None:
    """Print a spec with every default written out (what artifacts record)."""
    print(canonical_spec(spec))


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit status 2, never a traceback."""
    try:
        app(args=argv, standalone_mode=True)
    except (InputError, *USER_ERRORS) as error:
        message = str(error).strip().strip('"') or type(error).__name__
        print(f"widthtune: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
