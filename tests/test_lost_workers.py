"""A lost worker is not the trial's fault: a trial whose Ray worker is killed twice (max_failures: 1) resumes
from its last checkpoint each time and completes, its epochs counted once and never restarted from zero."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from widthtune.results.store import read_epochs, read_trials


def trial_workers():
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"ImplicitFunc" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def journal_epochs(results):
    folder = results / "journal"
    lines = (
        [json.loads(line) for p in folder.glob("*.jsonl") for line in p.read_text().splitlines()]
        if folder.is_dir()
        else []
    )
    return [int(line["epoch"]) for line in lines]


@pytest.mark.slow
def test_a_trial_whose_worker_is_killed_twice_completes_from_its_checkpoints(tmp_path):
    config = {
        "name": "lost",
        "model": "resnet_cifar:depth=8",
        "data": {"name": "digits", "resolution": 8, "fraction": 0.5},
        "train": {"epochs": 8, "batch_size": 16},
        "method": "uniform",
        "cost_target": {"ratio": 0.5},
        "max_failures": 1,
        "storage": str(tmp_path),
    }
    path = tmp_path / "lost.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    run = subprocess.Popen(
        [sys.executable, "-m", "widthtune.cli", "run", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    results = tmp_path / "lost" / "results"
    kills = 0
    deadline = time.time() + 400
    while time.time() < deadline and run.poll() is None and kills < 2:
        epochs = journal_epochs(results)
        if epochs and max(epochs) >= 2 + 2 * kills:  # kill after epoch 2, then after epoch 4
            workers = trial_workers()
            if workers:
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                kills += 1
        time.sleep(0.3)
    assert kills == 2, "the trial ended before its worker could be killed twice"
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    (row,) = read_trials(tmp_path / "lost")
    assert row["status"] == "completed" and row["epochs_trained"] == 8, row["error"]
    assert sorted(e["epoch"] for e in read_epochs(tmp_path / "lost")) == list(range(1, 9))
    assert journal_epochs(results).count(1) == 1  # resumed from checkpoints, never from epoch zero
