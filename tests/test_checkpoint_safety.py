"""Checkpoints are plain tensors read with weights_only=True: a crafted teacher file cannot run code, and a
checkpoint cut short by a kill falls back to the one before it."""

import os
import pickle

import pytest
import torch

from widthtune.models.artifact import make_artifact
from widthtune.models.cost import CostModel
from widthtune.models.registry import canonical_spec, materialize
from widthtune.models.widths import Widths
from widthtune.trainables.adapter import FoundWidths, restore, save_trial_state
from widthtune.trainables.task import Task
from widthtune.trainables.teacher import load_teacher
from widthtune.training import DataSpec, TrainConfig, TrainState, load_dataset

SPEC = "resnet_cifar:depth=8,resolution=8"


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_crafted_teacher_checkpoint_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model.pt"
    with open(path, "wb") as handle:
        pickle.dump({"model": Payload()}, handle)
    make_artifact(SPEC, Widths.base(CostModel.from_spec(SPEC).space), method="x").save(
        tmp_path / "widths.json"
    )
    with pytest.raises(pickle.UnpicklingError):
        load_teacher(path)
    assert not (tmp_path / "PWNED").exists()


def _state(model, epoch):
    return TrainState(
        epoch=epoch,
        step=epoch,
        images_seen=epoch,
        model={k: v.clone() for k, v in model.state_dict().items()},
        optimizer={},
        loader_rng=torch.Generator().get_state(),
        torch_rng=torch.get_rng_state(),
        records=(),
    )


def test_a_torn_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    """Outside a Tune session there is no Tune checkpoint: the trial folder's checkpoints are what is left."""
    spec = canonical_spec(SPEC)
    cost_model = CostModel.from_spec(spec)
    task = Task(
        model=spec,
        data=load_dataset(DataSpec("digits", resolution=8, fraction=0.1)),
        train=TrainConfig(epochs=1),
        cost_model=cost_model,
        cost_target=None,
    )
    model = materialize(spec)
    found = FoundWidths(Widths.base(cost_model.space), 0.0, 0.0)
    for epoch in (1, 2):
        folder = tmp_path / f"checkpoint_00000{epoch}"
        folder.mkdir()
        save_trial_state(folder, _state(model, epoch), found)
    newest = tmp_path / "checkpoint_000002" / "trial_state.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # killed mid-write
    state, restored = restore(tmp_path, task)
    assert state.epoch == 1 and restored.widths == found.widths
