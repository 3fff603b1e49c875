"""Faults on a real multi-node cluster (`ray start` head + worker node on 127.0.0.1, from `widthtune.cluster.local`):
the worker node's raylet is killed in the middle of a trial; the trial continues from its last checkpoint on the
remaining node, every trial is stored exactly once in Parquet and MLflow, and no epoch count restarts from zero."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ports import free_port_from
from widthtune.cluster.local import node_processes, start_local_cluster, stop_local_cluster
from widthtune.results.store import read_epochs, read_trials


def journal(results):
    """Each trial's journalled epochs in the order the driver got them (one file per trial)."""
    folder = results / "journal"
    if not folder.is_dir():
        return {}
    return {
        p.stem: [int(json.loads(line)["epoch"]) for line in p.read_text().splitlines()]
        for p in folder.glob("*.jsonl")
    }


def worker_raylet(temp_dir):
    """The raylet of the cluster's second node (its sockets are `raylet.1`, the head's `raylet`)."""
    for pid in node_processes(temp_dir):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "/raylet/raylet " in cmdline and "sockets/raylet.1 " in cmdline:
            return pid
    return None


@pytest.mark.slow
def test_a_trial_outlives_its_worker_nodes_raylet_and_is_stored_once(tmp_path):
    port = free_port_from(6390)
    cluster = start_local_cluster(
        2, 1, port, free_port_from(8275)
    )  # its folder: short, for Ray's socket paths
    try:
        config = {
            "name": "node-lost",
            "model": "resnet_cifar:depth=8",
            "data": {"name": "digits", "resolution": 8},
            "train": {"epochs": 6, "batch_size": 16},
            "method": "uniform",
            "cost_target": {"ratio": 0.5},
            "seeds": [0, 1],
            "storage": str(tmp_path / "shared"),
        }
        path = tmp_path / "node-lost.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        run = subprocess.Popen(
            [sys.executable, "-m", "widthtune.cli", "run", str(path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        results = tmp_path / "shared" / "node-lost" / "results"
        killed = None
        deadline = time.time() + 500
        while time.time() < deadline and run.poll() is None and killed is None:
            progress = journal(results)
            if len(progress) == 2 and all(
                max(e) >= 1 for e in progress.values()
            ):  # both trials (one per node) have a checkpoint, and most of their epochs ahead
                killed = worker_raylet(cluster.temp_dir)
                if killed is not None:
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.3)
        assert killed is not None, "the trials ended before the worker node could be killed"
        _, err = run.communicate(timeout=900)
        assert run.returncode == 0, err[-3000:]
        rows = read_trials(tmp_path / "shared" / "node-lost")
        assert len(rows) == 2 and len({r["trial_key"] for r in rows}) == 2
        assert all(r["status"] == "completed" and r["epochs_trained"] == 6 for r in rows), rows
        for row in rows:
            epochs = sorted(
                e["epoch"]
                for e in read_epochs(tmp_path / "shared" / "node-lost")
                if e["trial_key"] == row["trial_key"]
            )
            assert epochs == list(range(1, 7))
        arrived = journal(results)
        assert len(arrived) == 2 and all(e.count(1) == 1 for e in arrived.values()), (
            arrived
        )  # never from zero
        # the node's loss reached Tune: a trial failed and was retried (from its checkpoint, as the journal shows);
        # Tune's experiment state counts it (its log line may be routed elsewhere)
        states = (tmp_path / "shared" / "node-lost" / "tune").glob("*/experiment_state-*.json")
        failures = [int(n) for p in states for n in re.findall(r"num_failures\W+(\d+)", p.read_text())]
        assert max(failures, default=0) >= 1, failures
        client = MlflowClient(f"sqlite:///{tmp_path / 'shared' / 'node-lost' / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("node-lost")
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        keys = sorted(
            r.data.tags["widthtune.trial_key"] for r in runs if "widthtune.trial_key" in r.data.tags
        )
        assert keys == sorted(r["trial_key"] for r in rows)  # one MLflow run per trial
    finally:
        stop_local_cluster(Path(cluster.temp_dir))
        assert node_processes(cluster.temp_dir) == []
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
