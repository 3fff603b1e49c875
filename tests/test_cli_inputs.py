"""Every malformed command-line input is one line on stderr, exit status 2, no traceback, nothing written; the
command answers --help without importing torch, Ray or MLflow."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from widthtune.cli import main
from widthtune.models import Widths, channel_space

SPEC = "resnet_cifar:depth=8,shortcut=C,num_classes=10,resolution=32"
FACTORIES = """
from torch import nn

class Net(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, hidden, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.head(self.body(x))

def make_net(hidden=8):
    return Net(hidden)

class NotAModule:
    def __init__(self, **options):
        pass

def returns_int(**options):
    return 3

value = 5
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of bad input files, named as the table names them."""
    root = tmp_path_factory.mktemp("inputs")
    base = Widths.base(channel_space(SPEC)).as_dict()
    artifact = {"format": "widthtune.widths", "version": 1, "model": SPEC, "widths": base}
    (root / "huge.json").write_text(json.dumps(base | {"stage2.stream": 1e9}))
    (root / "version-string.json").write_text(json.dumps(artifact | {"version": "1"}))
    (root / "no-widths.json").write_text(json.dumps({k: v for k, v in artifact.items() if k != "widths"}))
    (root / "not-json.json").write_text("{widths: oops")
    (root / "array.json").write_text("[16, 32, 64]")
    (root / "other-format.json").write_text(json.dumps(artifact | {"format": "something.else"}))
    (root / "widths-folder.json").mkdir()
    (root / "afile").write_text("a file, not a folder\n")
    (root / "plain-folder").mkdir()
    (root / "broken-experiment").mkdir()
    (root / "broken-experiment" / "experiment.json").write_text("{torn")
    (root / "empty-experiment").mkdir()
    (root / "empty-experiment" / "experiment.json").write_text(json.dumps({"config": {"metric": "val_acc"}}))
    (root / "factories.py").write_text(FACTORIES)
    (root / "broken.py").write_text("raise RuntimeError('this module fails as it loads')\n")
    return root


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """`widthtune ARGS` in this process: (exit status, stdout, stderr)."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, out.getvalue(), err.getvalue()


def files_under(*folders: Path) -> set[Path]:
    return {p for folder in folders for p in folder.rglob("*")}


MALFORMED = [
    # model specs: empty items, repeated keys, absurd sizes, impossible architectures
    (["flops", "resnet_cifar:depth=20,,"], "model spec 'resnet_cifar:depth=20,,': option 2 is empty"),
    (["spec", "resnet_cifar:depth=20,,"], "option 2 is empty (a stray ',')"),
    (["spec", "resnet_cifar:,depth=20"], "option 1 is empty"),
    (["spec", "torchvision:resnet18,"], "option 1 is empty"),
    (["spec", "resnet_cifar:depth=20,depth=32"], "option 'depth' is given twice"),
    (["spec", "resnet_cifar:depth=21"], "depth=21 is not 6n+2"),
    (["spec", "resnet_cifar:depth"], "option 'depth' is not key=value"),
    (["spec", "resnet_cifar:color=red"], "unknown option 'color'"),
    (["spec", "resnet_cifar:width=1e9"], "width=1000000000.0 must be in (0, 64]"),
    (["spec", "resnet_cifar:resolution=100000"], "resolution=100000 must be at most 4096"),
    (["spec", "nosuch:depth=3"], "unknown model family 'nosuch'"),
    # python: specs run only an nn.Module class or a function that returns one
    (
        ["spec", "python:os:system,command=touch PWNED"],
        "python:os:system is a 'builtin_function_or_method' object",
    ),
    (["spec", "python:INPUTS/factories.py:NotAModule"], "class NotAModule is not a torch.nn.Module subclass"),
    (["spec", "python:INPUTS/factories.py:returns_int"], "returned 'int', not a torch.nn.Module"),
    (
        ["spec", "python:INPUTS/factories.py:value"],
        "is a 'int' object, not an nn.Module class or a Python function",
    ),
    (["spec", "python:INPUTS/factories.py:make_net,depth=3"], "does not take the options ['depth']"),
    (["spec", "python:INPUTS/factories.py:missing"], "has no attribute 'missing'"),
    (["spec", "python:INPUTS/broken.py:f"], "raised RuntimeError: this module fails as it loads"),
    (["spec", "python:no_such_module_xyz:f"], "cannot import 'no_such_module_xyz'"),
    # widths files
    (
        ["flops", SPEC, "--widths", "INPUTS/huge.json"],
        "'stage2.stream' is 1000000000, above its maximum 2048",
    ),
    (
        ["flops", SPEC, "--widths", "INPUTS/version-string.json"],
        "'version' must be an integer such as 1, got '1'",
    ),
    (["flops", SPEC, "--widths", "INPUTS/no-widths.json"], "no-widths.json' has no 'widths' key"),
    (["flops", SPEC, "--widths", "INPUTS/not-json.json"], "not-json.json' is not valid JSON"),
    (["flops", SPEC, "--widths", "INPUTS/array.json"], "must hold a JSON object, not list"),
    (["flops", SPEC, "--widths", "INPUTS/other-format.json"], "'format' is 'something.else'"),
    (["flops", SPEC, "--widths", "INPUTS/widths-folder.json"], "widths-folder.json' is not a file"),
    (["flops", SPEC, "--widths", "INPUTS/none.json"], "none.json' does not exist"),
    (["flops", SPEC, "--convention", "gflops"], "--convention 'gflops' is not one of: macs, flops, lwdna"),
    # export: where it writes, what it reads
    (
        ["export", SPEC, "--widths", "INPUTS/huge.json", "--format", "onnx", "--out", "m.onnx"],
        "above its maximum",
    ),
    (
        ["export", SPEC, "--format", "onnx", "--out", "INPUTS/afile/m.onnx"],
        "afile', which is a file, not a folder",
    ),
    (["export", SPEC, "--format", "onnx", "--out", "INPUTS"], "is a folder; name a file"),
    (["export", SPEC, "--format", "tflite", "--out", "m.tflite"], "--format 'tflite' is not one of"),
    (["export", SPEC, "--out", "m.onnx"], "Missing option '--format'"),
    (["export", SPEC, "--format", "onnx", "--out", "m.onnx", "--seed", "abc"], "Invalid value for '--seed'"),
    (["export", SPEC, "--best", "--format", "onnx", "--out", "m.onnx"], "--best needs an experiment folder"),
    (
        ["export", "runs/nosuch/trial", "--format", "onnx", "--out", "m.onnx"],
        "is no folder and no model spec",
    ),
    (["export", "INPUTS/plain-folder", "--format", "onnx", "--out", "m.onnx"], "is not a trial folder"),
    (["export", "INPUTS/plain-folder", "--best", "--format", "onnx", "--out", "m.onnx"], "not an experiment"),
    (
        [
            "export",
            "INPUTS/plain-folder",
            "--widths",
            "INPUTS/huge.json",
            "--format",
            "onnx",
            "--out",
            "m.onnx",
        ],
        "--widths goes with a model spec",
    ),
    (
        ["export", "INPUTS/broken-experiment", "--best", "--format", "onnx", "--out", "m"],
        "missing or damaged",
    ),
    (
        ["export", "INPUTS/empty-experiment", "--best", "--format", "onnx", "--out", "m"],
        "has no completed trial",
    ),
    (
        ["export", "INPUTS/empty-experiment", "--format", "onnx", "--out", "m"],
        "is an experiment folder: add --best",
    ),
    # the command line itself
    (["nosuch"], "No such command 'nosuch'"),
    (["flops"], "Missing argument 'SPEC'"),
    (["flops", SPEC, "--bogus"], "No such option: --bogus"),
]


@pytest.mark.parametrize(("args", "message"), MALFORMED, ids=[" ".join(a)[:60] for a, _ in MALFORMED])
def test_malformed_input_is_one_line_exit_2_and_writes_nothing(args, message, inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.replace("INPUTS", str(inputs)) for a in args]
    before = files_under(inputs, tmp_path)
    code, out, err = run_cli(args)
    assert code == 2, (code, out, err)
    assert message in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("widthtune: error: "), err
    assert "Traceback" not in err and out == ""
    assert files_under(inputs, tmp_path) == before  # nothing created, not even the parent of --out


def test_a_python_spec_takes_an_nn_module_class_or_a_function_that_returns_one(inputs):
    for target in ("Net", "make_net"):
        code, out, err = run_cli(["spec", f"python:{inputs}/factories.py:{target},hidden=4,resolution=8"])
        assert code == 0, err
        assert out.strip().startswith(f"python:{inputs}/factories.py:{target},") and "hidden=4" in out


def test_help_and_version_answer_fast_without_torch_ray_or_mlflow():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, widthtune.cli; print(sorted({'torch', 'ray', 'mlflow'} & set(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
    seconds = []
    for _ in range(3):  # the best of three: a loaded machine slows single runs
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "widthtune.cli", "--help"], capture_output=True, text=True, env=env
        )
        seconds.append(time.perf_counter() - started)
        assert result.returncode == 0 and "quickstart" in result.stdout and "export" in result.stdout
    assert min(seconds) < 1.5, seconds
    version = subprocess.run(
        [sys.executable, "-m", "widthtune.cli", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("widthtune 0.")


def test_help_lists_the_experiment_commands_first_with_an_example_each():
    code, out, _ = run_cli(["-h"])
    assert code == 0
    assert out.index("quickstart") < out.index("Models and widths") < out.index("flops")
    for command in ("run", "resume", "report", "ls", "quickstart", "flops", "export", "models", "spec"):
        code, out, _ = run_cli([command, "--help"])
        assert code == 0 and f"widthtune {command}" in out.split("Example", 1)[1], command


def test_models_lists_the_catalogue_without_torch():
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from widthtune.cli import main; main(['models'])"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0 and "resnet_cifar" in result.stdout and "depth=56" in result.stdout
    assert "repvgg" in result.stdout and "variant=A0" in result.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, contextlib, io\nfrom widthtune.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['models'])\n    except SystemExit: pass\n"
            "print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == "False", probe.stderr
