"""`widthtune export` writes a trained trial's weights (from its folder, or an experiment's best trial) with its
widths and spec; an export of a bare spec says its weights are random."""

import json
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch

from widthtune.cli import main
from widthtune.models import Widths, channel_space, materialize
from widthtune.models.artifact import make_artifact
from widthtune.results.store import write_trial
from widthtune.trainables.adapter import FoundWidths, save_trial_state
from widthtune.training.loop import EpochRecord, TrainState

SPEC = "resnet_cifar:depth=8,shortcut=C,num_classes=10,resolution=32"
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, out.getvalue(), err.getvalue()


def trained_model(widths: Widths, seed: int) -> torch.nn.Module:
    """Stands in for training: distinct weights per seed, BN statistics moved off their defaults."""
    model = materialize(SPEC, widths, seed=seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def save_checkpoint(folder: Path, model: torch.nn.Module, widths: Widths, epoch: int) -> None:
    """A checkpoint exactly as the trainable writes it (trainables/adapter.py's save_trial_state)."""
    folder.mkdir(parents=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    record = EpochRecord(epoch, 1.0, 0.5, 1.1, 0.5, 1.2, 0.45, 0.1, 1.0, 100.0, 64 * epoch)
    state = TrainState(
        epoch=epoch,
        step=epoch * 4,
        images_seen=64 * epoch,
        model={k: v.detach().clone() for k, v in model.state_dict().items()},
        optimizer=optimizer.state_dict(),
        loader_rng=torch.Generator().get_state(),
        torch_rng=torch.get_rng_state(),
        records=(record,) * epoch,
    )
    save_trial_state(folder, state, FoundWidths(widths, search_flops=1e6, search_seconds=0.5, info={"k": 1}))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> dict:
    """An experiment folder as a run leaves it: Tune trial folders with checkpoints, trials/KEY, the Parquet store."""
    root = tmp_path_factory.mktemp("exp") / "my-experiment"
    space = channel_space(SPEC)
    half, base = Widths.base(space).scale(0.5), Widths.base(space)
    (root / "experiment.json").parent.mkdir(parents=True)
    (root / "experiment.json").write_text(
        json.dumps({"format": "widthtune.experiment", "config": {"metric": "val_acc"}})
    )
    models = {}
    trials = {"k-half": ("t1", half, 0.6, "completed"), "k-base": ("t2", base, 0.8, "completed")}
    trials["k-errored"] = ("t3", base, 0.9, "errored")
    for key, (trial_id, widths, accuracy, status) in trials.items():
        folder = root / "tune" / "study-a" / f"trial_{trial_id}"
        artifact = make_artifact(SPEC, widths, method="direct")
        artifact.save(folder / "widths.json")
        artifact.save(root / "trials" / key / "widths.json")
        checkpoint = None
        if status == "completed":
            save_checkpoint(folder / "checkpoint_000000", trained_model(widths, 1), widths, epoch=1)
            models[key] = trained_model(widths, 2 + len(models))
            checkpoint = folder / "checkpoint_000001"
            save_checkpoint(checkpoint, models[key], widths, epoch=2)
            (folder / "checkpoint_000002").mkdir()  # torn: the newest folder never got its file
        write_trial(
            root / "results",
            {
                "trial_key": key,
                "trial_id": trial_id,
                "study": "study-a",
                "model": SPEC,
                "status": status,
                "group_names": list(space.names),
                "widths": [widths[n] for n in space.names],
                "macs": float(artifact.cost.macs),
                "final_val_acc": accuracy,
                "best_val_acc": accuracy,
                "checkpoint": str(checkpoint) if checkpoint else None,
            },
            [],
        )
    return {"root": root, "models": models}


def outputs_of(path: Path, fmt: str) -> tuple[np.ndarray, dict]:
    if fmt == "torchscript":
        extra = {"widths.json": ""}
        loaded = torch.jit.load(str(path), _extra_files=extra)
        return loaded(X).detach().numpy(), json.loads(extra["widths.json"])
    import onnx
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return session.run(None, {session.get_inputs()[0].name: X.numpy()})[0], json.loads(
        metadata["widthtune.widths"]
    )


def expected(model: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model(X).numpy()


@pytest.mark.parametrize("folder", ["tune/study-a/trial_t1", "trials/k-half"])
def test_export_a_trial_folder_writes_its_newest_trained_weights(experiment, folder, tmp_path):
    out = tmp_path / "deploy" / "model.pt"
    code, stdout, stderr = run_cli(
        ["export", str(experiment["root"] / folder), "--format", "torchscript", "--out", str(out)]
    )
    assert code == 0, stderr
    assert f"wrote {out} (torchscript, trained weights of trial" in stdout and "after epoch 2" in stdout
    assert "RANDOM" not in stdout
    got, metadata = outputs_of(out, "torchscript")
    np.testing.assert_allclose(got, expected(experiment["models"]["k-half"]), rtol=1e-4, atol=1e-5)
    assert metadata["weights"]["kind"] == "trained" and metadata["weights"]["epoch"] == 2
    assert metadata["weights"]["checkpoint"].endswith("trial_t1/checkpoint_000001")
    assert metadata["widths"]["stage3.stream"] == 32 and metadata["model"].startswith("resnet_cifar:")


def test_export_best_takes_the_best_completed_trial_by_the_experiment_metric(experiment, tmp_path):
    out = tmp_path / "best.onnx"
    code, stdout, stderr = run_cli(
        ["export", str(experiment["root"]), "--best", "--format", "onnx", "--out", str(out)]
    )
    assert code == 0, stderr
    assert (
        "trained weights of trial k-base after epoch 2, val_acc 0.8000" in stdout
    )  # the errored 0.9 is not it
    got, metadata = outputs_of(out, "onnx")
    np.testing.assert_allclose(got, expected(experiment["models"]["k-base"]), rtol=1e-4, atol=1e-5)
    assert metadata["weights"] | {"checkpoint": None} == {
        "kind": "trained",
        "trial": "k-base",
        "checkpoint": None,
        "epoch": 2,
        "val_acc": 0.8,
    }


def test_export_of_a_spec_says_its_weights_are_random(tmp_path):
    out = tmp_path / "random.pt"
    code, stdout, stderr = run_cli(
        ["export", SPEC, "--format", "torchscript", "--out", str(out), "--seed", "3"]
    )
    assert code == 0, stderr
    assert "RANDOM weights (seed 3), not trained" in stdout
    got, metadata = outputs_of(out, "torchscript")
    assert metadata["weights"] == {"kind": "random", "seed": 3}
    np.testing.assert_allclose(got, expected(materialize(SPEC, seed=3).eval()), rtol=1e-4, atol=1e-5)


def test_a_checkpoint_trained_at_other_widths_is_refused(experiment, tmp_path):
    space = channel_space(SPEC)
    folder = tmp_path / "trial_mixed"
    make_artifact(SPEC, Widths.base(space)).save(folder / "widths.json")
    half = Widths.base(space).scale(0.5)
    save_checkpoint(folder / "checkpoint_000000", trained_model(half, 0), half, epoch=1)
    out = tmp_path / "m.pt"
    code, _, stderr = run_cli(["export", str(folder), "--format", "torchscript", "--out", str(out)])
    assert code == 2 and "was trained at other widths than trial_mixed's widths.json" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not out.exists()
