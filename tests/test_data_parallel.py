"""Data-parallel trials (`resources.workers: 2`, gloo on the CPU) through Ray Train inside the Tune trial: each
worker trains a disjoint share of every epoch; a 2-worker trial lands in the single-process trial's accuracy band
on `digits`, and after its Train worker is killed it continues from its checkpoint (epochs never restart)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from widthtune.platform.config import ConfigError, validate_config
from widthtune.results.store import read_epochs, read_trials
from widthtune.trainables.data_parallel import lost_infrastructure, raised_by_the_code
from widthtune.training import DataSpec, load_dataset
from widthtune.training.data_parallel import Shard, ShardedBatches

COMMAND = [sys.executable, "-m", "widthtune.cli", "run"]


def test_the_workers_shares_of_an_epoch_are_disjoint_equal_and_together_the_epoch():
    data = load_dataset(DataSpec("digits", resolution=8, fraction=0.2))

    def batches(shard=None):
        loader = data.train_batches(16, augment="none", seed=3)
        return [y for _, y in (ShardedBatches(loader, shard) if shard else loader)]

    whole = batches()
    first, second = batches(Shard(0, 2)), batches(Shard(1, 2))
    assert len(first) == len(second) == len(whole) // 2
    assert all(torch.equal(a, b) for a, b in zip(first, whole[0::2], strict=False))
    assert all(torch.equal(a, b) for a, b in zip(second, whole[1::2], strict=False))
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2 workers"):
        Shard(2, 2)


def test_resources_of_a_data_parallel_trial_are_checked_by_field():
    base = {"name": "x", "model": "resnet_cifar:depth=8", "method": "uniform", "data": {"name": "digits"}}
    config = validate_config(
        {**base, "resources": {"workers": 4, "cpu_per_worker": 2, "gpu_per_worker": 0.5}}
    )
    assert config.resources.distributed and config.resources.per_trial() == (8, 2)
    with pytest.raises(ConfigError, match=r"resources\.workers"):
        validate_config({**base, "resources": {"workers": 0}})


def journal_epochs(results):
    """The epochs the driver journalled, in the order they arrived (a restart from zero would repeat epoch 1)."""
    folder = results / "journal"
    lines = [json.loads(line) for p in folder.glob("*.jsonl") for line in p.read_text().splitlines()]
    return [int(line["epoch"]) for line in lines] if folder.is_dir() else []


def descendants(root):
    """Process ids under `root` (a run's own Ray: its raylet and workers), so a test kills only its own."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def train_workers(root):
    pids = []
    for pid in descendants(root):
        try:
            if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


def experiment(tmp_path, name, resources, **fields):
    path = tmp_path / f"{name}.yaml"
    config = {
        "name": name,
        "model": "resnet_cifar:depth=8",
        "data": {"name": "digits", "resolution": 8},
        "train": {"epochs": 6, "batch_size": 64, "augment": "none"},
        "method": "uniform",
        "cost_target": {"ratio": 0.5},
        "resources": resources,
        "storage": str(tmp_path),
    }
    path.write_text(yaml.safe_dump({**config, **fields}))
    return path


@pytest.mark.slow
def test_a_two_worker_trial_matches_the_single_process_band_and_resumes_after_its_worker_is_killed(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    single = subprocess.run(
        [*COMMAND, str(experiment(tmp_path, "single", {"cpu": 1}))], env=env, capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    path = experiment(tmp_path, "ddp", {"workers": 2, "cpu_per_worker": 1})
    run = subprocess.Popen(
        [*COMMAND, str(path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    results = tmp_path / "ddp" / "results"
    killed, before, seen = [], set(), set()
    deadline = time.time() + 500
    while time.time() < deadline and run.poll() is None:
        workers = set(train_workers(run.pid))
        seen |= workers
        epochs = journal_epochs(results)
        if not killed and epochs and max(epochs) >= 2 and len(workers) == 2:
            before = set(seen)
            killed = sorted(workers)[:1]  # one of the two workers: Train restarts the group
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
    assert killed, "the trial ended before a worker could be killed"
    assert seen - before, "no new Train worker started after the kill"  # the worker group was restarted
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    (alone,) = read_trials(tmp_path / "single")
    (parallel,) = read_trials(tmp_path / "ddp")
    assert parallel["status"] == "completed" and parallel["epochs_trained"] == 6, parallel["error"]
    assert sorted(e["epoch"] for e in read_epochs(tmp_path / "ddp")) == list(range(1, 7))
    assert journal_epochs(results).count(1) == 1  # continued from the checkpoint, never from epoch zero
    assert parallel["macs"] == alone["macs"]  # the same widths: searched once, on rank 0
    # the trained DDP model exports from its Train run's last checkpoint
    out = tmp_path / "ddp.pt"
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "widthtune.cli",
            "export",
            str(tmp_path / "ddp"),
            "--best",
            "--format",
            "torchscript",
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert exported.returncode == 0 and "after epoch 6" in exported.stdout, exported.stderr[-2000:]
    assert alone["final_test_acc"] >= 0.6, alone["final_test_acc"]
    assert abs(parallel["final_test_acc"] - alone["final_test_acc"]) <= 0.1, (
        parallel["final_test_acc"],
        alone["final_test_acc"],
    )


def test_a_data_parallel_trial_larger_than_the_cluster_is_refused_before_anything_starts(tmp_path):
    path = experiment(tmp_path, "too-wide", {"workers": 8, "cpu_per_worker": 1})
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([*COMMAND, str(path)], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "resources: 8 workers need 8 CPUs per trial, but the Ray cluster has" in done.stderr
    assert not (tmp_path / "too-wide").exists()


def test_pbt_is_refused_for_data_parallel_trials():
    base = {"name": "x", "model": "resnet_cifar:depth=8", "method": "uniform", "data": {"name": "digits"}}
    pbt = {"name": "pbt", "hyperparam_mutations": {"train.lr": [0.1, 0.01]}}
    with pytest.raises(ConfigError, match="scheduler: pbt copies one trial's checkpoint into another"):
        validate_config({**base, "scheduler": pbt, "resources": {"workers": 2}})
    validate_config({**base, "scheduler": pbt})  # a single-process trial keeps PBT


def test_a_lost_worker_is_infrastructure_and_an_error_of_the_code_is_the_trials_own():
    from ray.exceptions import ActorDiedError
    from ray.train import ControllerError, WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    unreadable = OSError("cannot identify image file 'broken.jpg'")
    collateral = RuntimeError("gloo: connection closed by peer")
    own = WorkerGroupError("rank 1 raised", {1: unreadable, 0: collateral})
    assert not lost_infrastructure(own) and raised_by_the_code(own) is collateral  # the lowest rank's
    assert raised_by_the_code(WorkerGroupError("one", {1: unreadable})) is unreadable
    lost = WorkerGroupError(
        "rank 0 died", {0: WorkerHealthCheckFailedError("lost", ActorDiedError()), 1: collateral}
    )
    assert lost_infrastructure(lost)  # one lost worker makes the survivors' errors collateral
    assert lost_infrastructure(WorkerGroupError("died", {0: ActorDiedError()}))
    assert lost_infrastructure(ControllerError(RuntimeError("the controller's node went away")))
    assert not lost_infrastructure(unreadable) and raised_by_the_code(unreadable) is unreadable
