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
from widthtune.platform.config import ConfigError
from widthtune.platform.interruption import ExperimentInterrupted

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
def methods() -> None:
    """List the methods, what each does, and its hyperparameters with their defaults.

    Example: widthtune methods
    """
    from rich.markup import escape

    from widthtune.trainables.registry import registered

    table = Table("method", "what", "hyperparameters (defaults)")
    for method in registered().values():
        settings = ", ".join(f"{k}={v}" for k, v in method.defaults.items())
        table.add_row(method.name, escape(method.summary), escape(settings))
    Console().print(table)


@app.command()
def spec(spec: SpecArgument) -> None:
    """Print a spec with every default written out (what artifacts record)."""
    print(canonical_spec(spec))


OverrideOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a config field: KEY=VALUE (VALUE is YAML), e.g. --set train.epochs=5"
    ),
]


def _print_table(directory: Path) -> None:
    from widthtune.analysis.report import HEADER, comparison, table_cells
    from widthtune.results.store import read_trials

    table = Table(*HEADER)
    for row in comparison(read_trials(directory / "results")):
        table.add_row(*table_cells(row))
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _finish(directory: Path, write: bool = False) -> None:
    from widthtune.analysis.report import report_paths, write_report
    from widthtune.platform.runner import read_state
    from widthtune.platform.tracking import ui_command

    md, page = write_report(directory) if write else report_paths(directory)
    _print_table(directory)
    print(f"report: {page}  (markdown: {md})")
    print(f"MLflow UI: {ui_command(read_state(directory)['tracking']['uri'])}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="experiment YAML")],
    overrides: OverrideOption = None,
) -> None:
    """Run an experiment: validate the config, sweep on Ray Tune, record to MLflow and Parquet, write the report."""
    from widthtune.platform.config import load_config
    from widthtune.platform.runner import run_experiment

    _finish(run_experiment(load_config(config, overrides or [])))


@app.command()
def resume(directory: Annotated[Path, typer.Argument(help="the experiment directory")]) -> None:
    """Continue an interrupted experiment: finished trials stay, unfinished ones resume from their checkpoints."""
    from widthtune.platform.runner import execute

    execute(directory)
    _finish(directory.expanduser().resolve())


@app.command()
def report(directory: Annotated[Path, typer.Argument(help="the experiment directory")]) -> None:
    """Write report.md and report.html (table, accuracy vs MACs, width profiles) from the result store."""
    from widthtune.platform.runner import read_state

    read_state(directory)
    _finish(directory.expanduser().resolve(), write=True)


@app.command(name="ls")
def list_experiments(
    storage: Annotated[Path, typer.Argument(help="a storage folder holding experiments")] = Path("runs"),
) -> None:
    """List the experiments in a storage folder: kind, studies done, trials stored by status."""
    from widthtune.platform.runner import EXPERIMENT_FILE, read_state
    from widthtune.results.store import read_trials

    if not storage.is_dir():
        raise InputError(f"storage folder {str(storage)!r} does not exist")
    table = Table("experiment", "kind", "studies done", "trials", "completed", "stopped", "errored", "path")
    for path in sorted(p.parent for p in storage.glob(f"*/{EXPERIMENT_FILE}")):
        state = read_state(path)
        rows = read_trials(path / "results")
        statuses = [r["status"] for r in rows]
        done = sum(v == "done" for v in state["studies"].values())
        table.add_row(
            state["name"],
            state["kind"],
            f"{done}/{len(state['studies'])}",
            str(len(rows)),
            str(statuses.count("completed")),
            str(statuses.count("stopped")),
            str(statuses.count("errored")),
            str(path.resolve()),
        )
    Console().print(table)


@app.command()
def quickstart(
    storage: Annotated[Path, typer.Option(help="where the experiment folder goes")] = Path("runs"),
    overrides: OverrideOption = None,
) -> None:
    """uniform vs random vs direct (Optuna TPE + ASHA) on digits at one MACs target, 2 seeds (minutes on 2 cores)."""
    import time

    import yaml

    from widthtune.platform.config import apply_overrides, validate_config
    from widthtune.platform.runner import run_experiment

    raw = yaml.safe_load((Path(__file__).parent / "platform" / "quickstart.yaml").read_text())
    raw["name"] = f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}"
    raw["storage"] = str(storage)
    _finish(run_experiment(validate_config(apply_overrides(raw, overrides or []))))


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit status 2, never a traceback."""
    try:
        app(args=argv, standalone_mode=True)
    except (InputError, ConfigError, *USER_ERRORS) as error:
        message = str(error).strip().strip('"') or type(error).__name__
        print(f"widthtune: error: {message}", file=sys.stderr)
        sys.exit(2)
    except ExperimentInterrupted as error:
        print(f"widthtune: {error}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
