"""Every malformed experiment is refused before anything starts: `widthtune run` (and `--set`) print one line
naming the field, the value and what is allowed, exit with status 2, show no traceback and create no folder."""

import pytest
import yaml

from widthtune.cli import main

GOOD = {
    "name": "bad",
    "model": "resnet_cifar:depth=8",
    "data": {"name": "digits", "resolution": 8},
    "train": {"epochs": 1},
    "method": "uniform",
    "cost_target": {"ratio": 0.5},
}


def with_changes(section, value):
    if section is None:
        return dict(GOOD)
    return {**GOOD, section: value}


def empty_train_tree(tmp_path):
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / "tree" / split / name).mkdir(parents=True)
    return str(tmp_path / "tree")


CASES = [
    ("train", {"epochs": "ten"}, [], "train.epochs: 'ten' is not allowed; choose an integer"),
    ("train", {"lr": "abc"}, [], "train.lr: 'abc' is not allowed; choose a number"),
    ("train", {"momentum": "x"}, [], "train.momentum: 'x' is not allowed; choose a number"),
    ("cost_target", {"macs": 1}, [], "cost_target: {macs: 1} (1 macs) is out of reach for methods[uniform]"),
    ("method", "slimming", ["cost_target.ratio=5"], "is out of reach for methods[slimming] (slimming)"),
    ("cost_target", {"ratio": 0.5, "tolerance": 2}, [], "cost_target.tolerance: 2 is not allowed"),
    ("data", {"name": "cifar10", "root": "EMPTY"}, [], "data.root: "),
    ("data", {"name": "imagefolder", "root": "TREE"}, [], "data.root: "),
    ("model", "resnet_cifar:depth=20,,", [], "model: "),
    ("model", "resnet_cifar:depth=9", [], "model: 'resnet_cifar:depth=9'"),
    (
        "data",
        {"name": "digits", "resolution": 8},
        ["model=resnet_cifar:depth=8,resolution=32"],
        "data.resolution",
    ),
    ("method", {"name": "given", "widths": {"stage1.stream": 10**9}}, [], "methods[given]: "),
    ("tracking_uri", "ftp://host/x", [], "tracking_uri: 'ftp://host/x' has no MLflow scheme"),
    ("tracking_uri", "http://127.0.0.1:9", [], "tracking_uri: http://127.0.0.1:9 did not answer within 3 s"),
    ("storage", "A_FILE", [], "storage: "),
    ("method", {"name": "uniform", "label": "../../../escaped"}, [], "method.label: '../../../escaped'"),
    ("method", {"name": "uniform", "label": "it's"}, [], 'method.label: "it\'s"'),
    (None, None, ["=5"], "--set '=5': write KEY=VALUE"),
    (None, None, ["train.epochs=abc"], "train.epochs: 'abc' is not allowed; choose an integer"),
]


@pytest.mark.parametrize(("section", "value", "overrides", "message"), CASES, ids=[c[3][:40] for c in CASES])
def test_a_malformed_experiment_is_one_line_exit_2_and_creates_nothing(
    tmp_path, capsys, section, value, overrides, message
):
    storage = tmp_path / "runs"
    raw = with_changes(section, value)
    raw["storage"] = str(storage)
    if isinstance(raw.get("data"), dict) and raw["data"].get("root") == "EMPTY":
        (tmp_path / "empty").mkdir()
        raw["data"] = {**raw["data"], "root": str(tmp_path / "empty")}
    if isinstance(raw.get("data"), dict) and raw["data"].get("root") == "TREE":
        raw["data"] = {**raw["data"], "root": empty_train_tree(tmp_path)}
    if raw.get("storage") == str(storage) and section == "storage":
        (tmp_path / "a_file").write_text("x")
        raw["storage"] = str(tmp_path / "a_file")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    argv = ["run", str(path), *(item for o in overrides for item in ("--set", o))]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0], lines[0]
    assert not (storage / "bad").exists()
