"""Ctrl-C (a real SIGINT to the `widthtune` process) at several moments: exit status 130, the study stays
resumable, and `widthtune resume` finishes exactly the trials that were pending."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from widthtune.platform.runner import read_state
from widthtune.results.store import read_trials

COMMAND = [sys.executable, "-m", "widthtune.cli"]


def config(tmp_path, name):
    return {
        "name": name,
        "model": "resnet_cifar:depth=8",
        "data": {"name": "digits", "resolution": 8, "fraction": 0.3},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.05},
        "method": "uniform",
        "cost_target": {"ratio": 0.5},
        "seeds": [0, 1, 2],
        "search": {"name": "random", "max_concurrent": 1},
        "storage": str(tmp_path),
    }


def interrupt_when(tmp_path, name, ready):
    """Run the CLI, send SIGINT once `ready(results)` holds, return (exit status, output)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, name)))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        [*COMMAND, "run", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    results = tmp_path / name / "results"
    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None and not ready(results):
        time.sleep(0.2)
    assert driver.poll() is None, f"the run ended before the interrupt: {driver.stdout.read()[-2000:]}"
    driver.send_signal(signal.SIGINT)
    output, _ = driver.communicate(timeout=120)
    return driver.returncode, output


def journal_lines(results):
    folder = results / "journal"
    return sum(len(p.read_text().splitlines()) for p in folder.glob("*.jsonl")) if folder.is_dir() else 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("moment", "ready"),
    [
        ("first epoch", lambda results: journal_lines(results) >= 1),
        ("after one trial", lambda results: len(read_trials(results)) >= 1),
    ],
)
def test_ctrl_c_leaves_the_study_resumable_and_resume_finishes_it(tmp_path, moment, ready):
    name = moment.replace(" ", "-")
    status, output = interrupt_when(tmp_path, name, ready)
    assert status == 130, output[-3000:]
    assert "widthtune resume" in output and "Traceback" not in output
    assert "3/3 ended" not in output  # the progress display does not claim the study finished
    directory = tmp_path / name
    assert read_state(directory)["studies"]["uniform"] != "done"
    assert len([r for r in read_trials(directory / "results") if r["status"] == "completed"]) < 3

    resumed = subprocess.run(
        [*COMMAND, "resume", str(directory)],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    rows = read_trials(directory / "results")
    assert sorted(r["seed"] for r in rows) == [0, 1, 2]
    assert all(r["status"] == "completed" and r["epochs_trained"] == 3 for r in rows)
    assert read_state(directory)["studies"]["uniform"] == "done"
