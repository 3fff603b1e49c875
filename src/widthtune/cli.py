"""The `widthtune` command.

Light at start-up: `--help`, `--version` and `models` import no torch, Ray or MLflow; each command imports what
it needs when it runs.
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from typer._click.exceptions import ClickException  # the click that typer vendors and raises

import widthtune
from widthtune.models.spec import SpecError
from widthtune.models.widths import Widths, WidthsError
from widthtune.platform.interruption import ExperimentInterrupted

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Search the layer-wise widths of convolutional networks.\n\nStart with: widthtune quickstart",
)
# the panel of the model tools; the experiment commands come first, under "Commands"
MODELS_PANEL = "Models and widths"
cluster_app = typer.Typer(
    no_args_is_help=True,
    help="Ray clusters: templates for `ray up` and KubeRay, and a local multi-node cluster to try them on.",
)
app.add_typer(cluster_app, name="cluster")


def _version(value: bool) -> None:
    if value:
        print(f"widthtune {widthtune.__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Search the layer-wise widths of convolutional networks."""


# Errors that mean "the input is wrong" (one line, exit status 2), named by module: an error can only have been
# raised once its module is loaded, so telling them apart needs no import (most of these modules import torch).
USER_ERRORS = (
    ("widthtune.platform.config", "ConfigError"),
    ("widthtune.models.surgery", "SurgeryError"),
    ("widthtune.models.match", "CostTargetError"),
    ("widthtune.models.dependency", "UnsupportedModelError"),
    ("widthtune.models.export", "ExportError"),
    ("widthtune.analysis.trained", "TrainedTrialError"),
    ("widthtune.results.files", "NotWritableError"),
    ("widthtune.cluster.local", "ClusterError"),
    ("widthtune.cluster.templates", "TemplateError"),
)


class InputError(ValueError):
    """A command-line value outside what is allowed."""


class RunFailed(RuntimeError):
    """An experiment ran, but nothing it was for came out (every trial errored, or a study could not start)."""


def _is_user_error(error: BaseException) -> bool:
    """Whether an error means bad input (reported in one line) rather than a fault (a traceback)."""
    if isinstance(error, InputError | SpecError | WidthsError | FileNotFoundError):
        return True
    return any(
        module in sys.modules and isinstance(error, getattr(sys.modules[module], name))
        for module, name in USER_ERRORS
    )


SpecArgument = Annotated[
    str,
    typer.Argument(
        metavar="SPEC",
        help="family:key=value,... (e.g. resnet_cifar:depth=56,shortcut=C), torchvision:NAME or python:FILE.py:FACTORY",
    ),
]


def _artifact(spec: str, widths: Path | None):
    from widthtune.models.artifact import load_widths, make_artifact
    from widthtune.models.registry import channel_space

    if widths is None:
        return make_artifact(spec, Widths.base(channel_space(spec)), method="base")
    return load_widths(widths, spec)


@app.command(rich_help_panel=MODELS_PANEL)
def flops(
    spec: SpecArgument,
    widths: Annotated[
        Path | None, typer.Option(help="widths JSON (artifact or {group: width}); default: base")
    ] = None,
    convention: Annotated[str, typer.Option(help="macs (default), flops or lwdna")] = "macs",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Cost (MACs, FLOPs, LW-DNA FLOPs, params) and channel groups of a model at some widths.

    Example: widthtune flops resnet_cifar:depth=20 --widths runs/NAME/trials/KEY/widths.json
    """
    from widthtune.models.cost import CONVENTIONS

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


def _is_folder_source(source: str) -> bool:
    """Whether export's SOURCE names a folder (a trial or an experiment) rather than a model spec."""
    from widthtune.models.catalog import CATALOG

    path = Path(source).expanduser()
    if path.is_dir():
        return True
    if ":" not in source and source.strip() not in CATALOG:
        raise InputError(
            f"export: {source!r} is no folder and no model spec; give a trial folder, an experiment folder "
            f"with --best, or a spec such as resnet_cifar:depth=20 (families: {', '.join(CATALOG)})"
        )
    return False


@app.command(rich_help_panel=MODELS_PANEL)
def export(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="a trial folder (its trained weights), an experiment folder with --best, "
            "or a model spec (random weights)",
        ),
    ],
    format: Annotated[str, typer.Option("--format", help="torchscript or onnx")],
    out: Annotated[Path, typer.Option(help="output file")],
    best: Annotated[
        bool, typer.Option("--best", help="SOURCE is an experiment folder: export its best completed trial")
    ] = False,
    widths: Annotated[
        Path | None,
        typer.Option(help="with a spec: widths JSON (artifact or {group: width}); default: the base widths"),
    ] = None,
    seed: Annotated[int, typer.Option(help="with a spec: seed of the random weights")] = 0,
) -> None:
    """Write a trained trial's model (or an untrained architecture) as a TorchScript or ONNX file.

    Example: widthtune export runs/NAME --best --format onnx --out best.onnx

    Example: widthtune export runs/NAME/trials/KEY --format torchscript --out model.pt

    Example (random weights): widthtune export resnet_cifar:depth=20 --widths w.json --format onnx --out m.onnx
    """
    from widthtune.models.export import FORMATS, check_output

    if format not in FORMATS:
        raise InputError(f"--format {format!r} is not one of: {', '.join(FORMATS)}")
    check_output(out)
    if _is_folder_source(source):
        if widths is not None:
            raise InputError("--widths goes with a model spec; a trial folder carries its own widths")
        _export_trained(Path(source), best, format, out)
        return
    if best:
        raise InputError(f"--best needs an experiment folder; {source!r} is not a folder")
    from widthtune.models.export import export_model

    artifact = _artifact(source, widths)
    path = export_model(artifact, format, out, seed=seed)
    print(
        f"wrote {path} ({format}, RANDOM weights (seed {seed}), not trained; "
        f"{artifact.cost.macs:,} MACs, {artifact.cost.params:,} params)"
    )


def _export_trained(source: Path, best: bool, format: str, out: Path) -> None:
    """Export the trained weights of a trial folder, or of an experiment's best trial."""
    from widthtune.analysis.trained import best_trial, trained_state, trial_from_folder
    from widthtune.models.artifact import make_artifact
    from widthtune.models.export import export_model

    trial = best_trial(source) if best else trial_from_folder(source)
    weights, epoch = trained_state(trial)
    artifact = make_artifact(trial.spec, trial.widths, method="trained", provenance={"trial": trial.name})
    where = {"trial": trial.name, "checkpoint": str(trial.checkpoint.parent), "epoch": epoch, **trial.score}
    path = export_model(artifact, format, out, weights=weights, source=where)
    scores = "".join(f", {metric} {value:.4f}" for metric, value in trial.score.items())
    print(
        f"wrote {path} ({format}, trained weights of trial {trial.name} after epoch {epoch}{scores}; "
        f"{artifact.cost.macs:,} MACs, {artifact.cost.params:,} params)"
    )


@app.command(rich_help_panel=MODELS_PANEL)
def models() -> None:
    """List model families and their options.

    Example: widthtune models
    """
    from widthtune.models.catalog import CATALOG

    table = Table("family", "what", "options (defaults)")
    for family in CATALOG.values():
        options = ", ".join(f"{k}={v}" for k, v in family.defaults.items())
        table.add_row(
            family.name, family.summary, options + (", + factory kwargs" if family.open_options else "")
        )
    Console().print(table)


@app.command(rich_help_panel=MODELS_PANEL)
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


@app.command(rich_help_panel=MODELS_PANEL)
def spec(spec: SpecArgument) -> None:
    """Check a spec like flops does and print it with every default written out (what artifacts record).

    Example: widthtune spec resnet_cifar:depth=20
    """
    from widthtune.models.registry import canonical_spec, channel_space

    channel_space(spec)  # the model's groups are traced, so a spec that cannot be built is refused here
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


def _finish(directory: Path) -> None:
    from widthtune.analysis.report import report_paths

    md, page = report_paths(directory)
    _print_table(directory)
    print(f"report: {page}  (markdown: {md})")
    _print_mlflow(directory)


def _print_mlflow(directory: Path) -> None:
    from widthtune.platform.config import ConfigError
    from widthtune.platform.runner import read_state
    from widthtune.platform.tracking import ui_command

    try:
        tracking = read_state(directory)["tracking"]
        print(f"MLflow UI: {ui_command(tracking['uri'], tracking['experiment_id'])}")
    except ConfigError as error:  # a damaged experiment.json: the report came from the store alone
        print(f"widthtune: warning: {error}", file=sys.stderr)


def _check_outcome(directory: Path) -> None:
    """A run in which nothing trained, or a study could not start, fails (exit status 1) with one line."""
    from widthtune.platform.runner import read_state
    from widthtune.results.store import read_trials

    rows = [r for r in read_trials(directory / "results") if r["role"] != "artifact"]
    failed = [k for k, v in read_state(directory)["studies"].items() if v == "failed"]
    errored = [r for r in rows if r["status"] == "errored"]
    if rows and len(errored) == len(rows):
        raise RunFailed(f"every trial errored ({len(rows)}); the first: {errored[0]['error']}")
    if failed:
        raise RunFailed(
            f"{len(failed)} studies could not run ({', '.join(failed)}); see the table and the report"
        )


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="experiment YAML")],
    overrides: OverrideOption = None,
) -> None:
    """Run an experiment: validate the config, sweep on Ray Tune, record to MLflow and Parquet, write the report.

    Example: widthtune run configs/compare-digits.yaml --set train.epochs=5
    """
    from widthtune.platform.config import load_config
    from widthtune.platform.runner import run_experiment

    directory = run_experiment(load_config(config, overrides or []))
    _finish(directory)
    _check_outcome(directory)


@app.command()
def resume(directory: Annotated[Path, typer.Argument(help="the experiment directory")]) -> None:
    """Continue an interrupted experiment: finished trials stay, unfinished ones resume from their checkpoints.

    Example: widthtune resume runs/NAME
    """
    from widthtune.platform.runner import execute

    execute(directory)
    _finish(directory.expanduser().resolve())
    _check_outcome(directory.expanduser().resolve())


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="the experiment directory")],
    out: Annotated[
        Path | None, typer.Option("--out", help="write the report here instead of DIRECTORY/report")
    ] = None,
) -> None:
    """Write report.md and report.html (table, accuracy vs MACs, width profiles) from the result store.

    Example: widthtune report runs/NAME --out /tmp/name-report
    """
    from widthtune.analysis.report import write_report
    from widthtune.results.files import EXPERIMENT_FILE, check_writable

    directory = directory.expanduser().resolve()
    if not (directory / EXPERIMENT_FILE).is_file() and not (directory / "results" / "trials").is_dir():
        raise InputError(f"{str(directory)!r} is not a widthtune experiment directory (no {EXPERIMENT_FILE})")
    target = out if out is not None else directory / "report"
    existing = next(
        p for p in (target.expanduser().absolute(), *target.expanduser().absolute().parents) if p.exists()
    )
    check_writable(existing if existing.is_dir() else existing.parent, "give --out a folder you can write to")
    md, page = write_report(directory, out)
    _print_table(directory)
    print(f"report: {page}  (markdown: {md})")
    _print_mlflow(directory)


@app.command()
def sync(directory: Annotated[Path, typer.Argument(help="the experiment directory")]) -> None:
    """Copy every stored trial into MLflow (after the tracking server was down); running it twice adds nothing.

    Example: widthtune sync runs/NAME
    """
    from widthtune.platform.config import ConfigError
    from widthtune.platform.runner import read_state
    from widthtune.platform.sync import sync_tracking
    from widthtune.platform.tracking import Tracking, close_parent_run
    from widthtune.platform.tracking_uri import check_tracking_uri
    from widthtune.results.store import read_trials

    directory = directory.expanduser().resolve()
    state = read_state(directory)
    tracking = Tracking(**state["tracking"])
    try:
        check_tracking_uri(tracking.uri)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    synced = sync_tracking(directory, tracking, state["config_hash"])
    if all(v in ("done", "failed") for v in state["studies"].values()):
        close_parent_run(tracking, directory / "report", read_trials(directory / "results"))
    print(f"MLflow at {tracking.uri}: {synced.created} trial runs created, {synced.found} already there")


@app.command(name="ls")
def list_experiments(
    storage: Annotated[Path, typer.Argument(help="a storage folder holding experiments")] = Path("runs"),
) -> None:
    """List the experiments in a storage folder: kind, studies done, trials stored by status.

    Example: widthtune ls runs
    """
    if not storage.is_dir():
        raise InputError(f"storage folder {str(storage)!r} does not exist")
    from widthtune.platform.runner import EXPERIMENT_FILE, read_state
    from widthtune.results.store import read_trials

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
    """uniform vs random vs direct (Optuna TPE + ASHA) on digits at one MACs target, 2 seeds (minutes on 2 cores).

    Example: widthtune quickstart --storage runs --set train.epochs=2
    """
    import time

    import yaml

    from widthtune.platform.config import apply_overrides, validate_config
    from widthtune.platform.runner import run_experiment

    raw = yaml.safe_load((Path(__file__).parent / "platform" / "quickstart.yaml").read_text())
    raw["name"] = f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}"
    raw["storage"] = str(storage)
    _finish(run_experiment(validate_config(apply_overrides(raw, overrides or []))))


@app.command()
def submit(
    config: Annotated[Path, typer.Argument(help="experiment YAML")],
    address: Annotated[str, typer.Option(help="the head's dashboard, e.g. http://HEAD:8265")],
    overrides: OverrideOption = None,
    working_dir: Annotated[
        Path | None, typer.Option(help="a folder uploaded with the job (your method files, data lists)")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="stay until the job ends, printing its output")
    ] = False,
) -> None:
    """Run an experiment on a Ray cluster as a Ray Job; storage must be a folder the cluster sees, or a URI.

    Example: widthtune submit configs/compare-digits.yaml --address http://HEAD:8265 --set storage=/mnt/shared/runs
    """
    from widthtune.cluster.submission import submit_experiment, wait_for_job
    from widthtune.platform.config import load_config

    job = submit_experiment(load_config(config, overrides or []), address, working_dir)
    print(f"submitted job {job.job_id} to {job.address}")
    print(f"follow its output: {job.follow}")
    print(f"its state: {job.status}")
    print(f"results: {job.experiment_dir} (if it stops early: widthtune resume {job.experiment_dir})")
    if wait:
        status = wait_for_job(job)
        print(f"job {job.job_id}: {status}")
        if status != "SUCCEEDED":
            raise RunFailed(f"job {job.job_id} ended {status}; see {job.follow}")


@cluster_app.command("template")
def cluster_template(
    config: Annotated[Path, typer.Argument(help="experiment YAML")],
    kind: Annotated[str, typer.Option(help="ray-up, kuberay-cluster or kuberay-job")],
    overrides: OverrideOption = None,
    nodes: Annotated[int, typer.Option(help="worker nodes (each holds one trial)")] = 2,
    image: Annotated[str | None, typer.Option(help="container image with widthtune installed")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow server the cluster records to (default: the config's)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write here instead of printing")] = None,
) -> None:
    """A cluster definition sized from the experiment's resources: `ray up` YAML, or KubeRay RayCluster/RayJob.

    Example: widthtune cluster template --kind kuberay-job configs/compare-digits.yaml --out job.yaml
    """
    from widthtune.cluster.templates import render
    from widthtune.platform.config import load_config

    text = render(
        kind, load_config(config, overrides or []), str(config.resolve()), nodes, image, tracking_uri
    )
    if out is None:
        print(text, end="")
    else:
        out.write_text(text)
        print(f"wrote {out} ({kind})")


@cluster_app.command("local")
def cluster_local(
    nodes: Annotated[int, typer.Option(help="nodes, the head included")] = 2,
    cpus_per_node: Annotated[float, typer.Option(help="CPUs each node offers")] = 1,
    port: Annotated[int, typer.Option(help="the head's GCS port (RAY_ADDRESS=127.0.0.1:PORT)")] = 6379,
    dashboard_port: Annotated[int, typer.Option(help="the dashboard port (submit --address)")] = 8265,
) -> None:
    """Start a real multi-node Ray cluster on 127.0.0.1 (`ray start` head + worker nodes) to try cluster runs.

    Example: widthtune cluster local --nodes 2 && RAY_ADDRESS=127.0.0.1:6379 widthtune run configs/x.yaml
    """
    from widthtune.cluster.local import start_local_cluster

    cluster = start_local_cluster(nodes, cpus_per_node, port, dashboard_port)
    print(
        f"local cluster: {cluster.nodes} nodes of {cluster.cpus_per_node:g} CPUs, files in {cluster.temp_dir}"
    )
    print(f"run on it:    RAY_ADDRESS={cluster.address} widthtune run CONFIG")
    print(f"submit to it: widthtune submit CONFIG --address {cluster.dashboard}")
    print(f"stop it:      widthtune cluster stop --port {port}")


@cluster_app.command("stop")
def cluster_stop(
    port: Annotated[int, typer.Option(help="the GCS port the local cluster was started with")] = 6379,
) -> None:
    """Stop the local cluster started with that port: its own processes only (never `ray stop`).

    Example: widthtune cluster stop
    """
    from widthtune.cluster.local import default_temp_dir, read_local_cluster, stop_local_cluster

    cluster = read_local_cluster(default_temp_dir(port))
    stopped = stop_local_cluster(Path(cluster.temp_dir))
    print(f"stopped the local cluster at {cluster.address} ({len(stopped)} processes)")


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input becomes one line on stderr and exit status 2, never a traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app(args=args or ["--help"], standalone_mode=False)
    except ExperimentInterrupted as error:
        print(f"widthtune: {error}", file=sys.stderr)
        sys.exit(130)
    except (
        ClickException
    ) as error:  # a usage error: unknown option, missing argument, value of the wrong type
        context = getattr(error, "ctx", None)
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        print(f"widthtune: error: {' '.join(error.format_message().split())}{hint}", file=sys.stderr)
        sys.exit(error.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("widthtune: interrupted; an experiment continues with `widthtune resume DIR`", file=sys.stderr)
        sys.exit(130)
    except RunFailed as error:
        print(f"widthtune: error: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        print(
            f"widthtune: error: the disk is full ({error.filename or 'writing'}); nothing stored is lost: free "
            "space, then `widthtune resume DIR`",
            file=sys.stderr,
        )
        sys.exit(1)
    except Exception as error:
        if not _is_user_error(error):
            raise
        message = " ".join(str(error).split()).strip('"') or type(error).__name__
        print(f"widthtune: error: {message}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
