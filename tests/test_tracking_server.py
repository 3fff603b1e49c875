"""Tracking is secondary to results, against a real `mlflow server` on 127.0.0.1: killed mid-sweep, the sweep
completes, every trial reaches Parquet, the failure is one warning, and `widthtune sync` backfills MLflow
afterwards (running it twice creates nothing new); a server that does not answer is refused before a run."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from mlflow.tracking import MlflowClient

from widthtune.results.store import read_trials

COMMAND = [sys.executable, "-m", "widthtune.cli"]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(tmp_path, port):
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    raise AssertionError("mlflow server did not start")


def stop(server):
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()


@pytest.fixture(params=["local", "two-node-cluster"])
def ray_address(request):
    """Where the sweep runs: a fresh local Ray, or a real two-node cluster (`ray start` processes on 127.0.0.1)."""
    if request.param == "local":
        yield {}
        return
    from widthtune.cluster.local import start_local_cluster, stop_local_cluster

    gcs, dashboard = free_port(), free_port()
    cluster = start_local_cluster(2, 1, gcs, dashboard)
    try:
        yield {"RAY_ADDRESS": cluster.address}
    finally:
        stop_local_cluster(cluster.temp_dir)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_the_sweep_outlives_its_tracking_server_and_sync_backfills_it(tmp_path, ray_address):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    config = {
        "name": "served",
        "model": "resnet_cifar:depth=8",
        "data": {"name": "digits", "resolution": 8, "fraction": 0.3},
        "train": {"epochs": 2, "batch_size": 32},
        "method": "uniform",
        "cost_target": {"ratio": 0.5},
        "seeds": [0, 1, 2],
        "search": {"name": "random", "max_concurrent": 1},
        "tracking_uri": uri,
        "storage": str(tmp_path),
    }
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **ray_address}
    run = subprocess.Popen(
        [*COMMAND, "run", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    journal = tmp_path / "served" / "results" / "journal"
    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None:
        if journal.is_dir() and sum(len(p.read_text().splitlines()) for p in journal.glob("*.jsonl")) >= 2:
            break
        time.sleep(0.3)
    stop(server)  # the tracking server dies mid-sweep
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    assert err.count("warning: MLflow") == 1 and "Traceback" not in err, err[-3000:]
    rows = read_trials(tmp_path / "served")
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)

    server = start_server(tmp_path, port)
    try:
        synced = subprocess.run(
            [*COMMAND, "sync", str(tmp_path / "served")], env=env, capture_output=True, text=True
        )
        assert synced.returncode == 0, synced.stderr[-2000:]
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("served")
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        keys = sorted(
            r.data.tags["widthtune.trial_key"] for r in runs if "widthtune.trial_key" in r.data.tags
        )
        assert keys == sorted(r["trial_key"] for r in rows)
        again = subprocess.run(
            [*COMMAND, "sync", str(tmp_path / "served")], env=env, capture_output=True, text=True
        )
        assert again.returncode == 0 and " 0 trial runs created" in again.stdout, again.stdout + again.stderr
        assert len(client.search_runs([experiment.experiment_id], max_results=100)) == len(runs)
    finally:
        stop(server)


def test_a_tracking_server_that_does_not_answer_is_refused_before_anything_starts(tmp_path, capsys):
    from widthtune.cli import main

    port = free_port()  # nothing listens there
    path = tmp_path / "c.yaml"
    config = {
        "name": "nobody",
        "model": "resnet_cifar:depth=8",
        "method": "uniform",
        "storage": str(tmp_path),
    }
    path.write_text(yaml.safe_dump({**config, "tracking_uri": f"http://127.0.0.1:{port}"}))
    started = time.time()
    with pytest.raises(SystemExit) as exited:
        main(["run", str(path)])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1 and "did not answer within 3 s" in err, err
    assert time.time() - started < 30 and not (tmp_path / "nobody").exists()
