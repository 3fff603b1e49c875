"""The `widthtune` command: flops and export work; bad input is one line on stderr with exit status 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from widthtune.models import Widths, channel_space, materialize

SPEC = "resnet_cifar:depth=8,shortcut=C,num_classes=10,resolution=32"


def widthtune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "widthtune.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@pytest.fixture(scope="module")
def half_widths(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "widths.json"
    path.write_text(json.dumps(Widths.base(channel_space(SPEC)).scale(0.5).as_dict()))
    return path


def test_flops_json_reports_every_convention_and_the_groups(half_widths):
    result = widthtune("flops", "resnet_cifar:depth=56,shortcut=C", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["macs"] == 125_747_840 and data["flops"] == 2 * data["macs"] and data["params"] == 855_770
    assert data["lwdna"] == 127_369_856
    assert data["groups"][0] == {"name": "stage1.stream", "base": 16, "width": 16}
    half = json.loads(
        widthtune("flops", SPEC, "--widths", str(half_widths), "--convention", "lwdna", "--json").stdout
    )
    assert half["cost"] == half["lwdna"] < data["lwdna"]
    assert {g["width"] for g in half["groups"]} == {8, 16, 32}


@pytest.mark.parametrize(
    ("spec", "macs", "params"),
    [
        ("densenet_cifar:depth=40,growth=12", 282_917_328, 1_059_298),
        ("preresnet_cifar:depth=164", 247_646_720, 1_703_258),
        ("torchvision:shufflenet_v2_x1_0,resolution=64", None, 2_278_604),
    ],
    ids=["densenet40", "preresnet164", "shufflenet"],
)
def test_flops_prices_concatenating_and_selecting_families(spec, macs, params):
    result = widthtune("flops", spec, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["params"] == params and (macs is None or data["macs"] == macs)


def test_flops_table_output():
    result = widthtune("flops", "vgg_cifar:depth=11")
    assert result.returncode == 0 and "conv8" in result.stdout and "macs" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["flops", "nosuch:depth=3"], "unknown model family 'nosuch'"),
        (["flops", "resnet_cifar:depth=21"], "depth=21 is not 6n+2"),
        (["flops", "resnet_cifar:color=red"], "unknown option 'color'"),
        (["flops", "resnet_cifar:depth=8", "--widths", "/no/such/file.json"], "does not exist"),
        (["flops", "resnet_cifar:depth=8", "--convention", "gflops"], "--convention 'gflops'"),
        (["flops", "torchvision:nosuchnet"], "not a torchvision classification model"),
        (["export", SPEC, "--widths", "WIDTHS", "--format", "tflite", "--out", "x"], "--format 'tflite'"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args, message, half_widths):
    result = widthtune(*[str(half_widths) if a == "WIDTHS" else a for a in args])
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("value", "message"), [(0, "must be positive"), (-4, "must be positive"), (None, "must be a number")]
)
def test_bad_widths_files_are_rejected(tmp_path, value, message):
    widths = Widths.base(channel_space(SPEC)).as_dict() | {"stage2.stream": value}
    (tmp_path / "w.json").write_text(json.dumps(widths))
    result = widthtune("flops", SPEC, "--widths", str(tmp_path / "w.json"))
    assert result.returncode == 2 and "stage2.stream" in result.stderr and message in result.stderr
    (tmp_path / "w.json").write_text(json.dumps({"stage9": 4}))
    result = widthtune("flops", SPEC, "--widths", str(tmp_path / "w.json"))
    assert result.returncode == 2 and "unknown groups stage9" in result.stderr


def test_export_torchscript_and_onnx_compute_what_the_model_computes(tmp_path, half_widths):
    import onnxruntime

    model = materialize(SPEC, json.loads(half_widths.read_text()), seed=0).eval()
    x = torch.randn(3, 3, 32, 32)
    expected = model(x).detach().numpy()
    for fmt in ("torchscript", "onnx"):
        out = tmp_path / f"model.{fmt}"
        result = widthtune("export", SPEC, "--widths", str(half_widths), "--format", fmt, "--out", str(out))
        assert result.returncode == 0, result.stderr
        if fmt == "torchscript":
            extra = {"widths.json": ""}
            loaded = torch.jit.load(str(out), _extra_files=extra)
            got = loaded(x).detach().numpy()
            assert json.loads(extra["widths.json"])["widths"]["stage3.stream"] == 32
        else:
            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
