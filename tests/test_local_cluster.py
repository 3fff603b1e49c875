"""A real local multi-node cluster (`widthtune cluster local`: `ray start` head + a worker node on 127.0.0.1, on
ports of its own), an experiment submitted to it as a Ray Job (`widthtune submit`) that completes with its
results in storage, `widthtune resume` on that storage, and `widthtune cluster stop` ending exactly its processes."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from ports import free_port_from
from widthtune.cluster.local import default_temp_dir, node_processes
from widthtune.results.store import read_trials

COMMAND = [sys.executable, "-m", "widthtune.cli"]


def widthtune(*args, env=None, timeout=600):
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout
    )


@pytest.fixture
def local_cluster():
    port, dashboard = free_port_from(6390), free_port_from(8275)
    started = widthtune(
        "cluster", "local", "--nodes", "2", "--port", str(port), "--dashboard-port", str(dashboard)
    )
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        assert f"RAY_ADDRESS=127.0.0.1:{port}" in started.stdout
        yield port, dashboard
    finally:
        stopped = widthtune("cluster", "stop", "--port", str(port))
        assert stopped.returncode == 0, stopped.stderr[-2000:]
        assert node_processes(default_temp_dir(port)) == []
        shutil.rmtree(default_temp_dir(port), ignore_errors=True)


def small_experiment(tmp_path, name, storage):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "model": "resnet_cifar:depth=8",
                "data": {"name": "digits", "resolution": 8, "fraction": 0.3},
                "train": {"epochs": 2, "batch_size": 64},
                "method": "random",
                "cost_target": {"ratio": 0.5},
                "seeds": [0, 1],
                "storage": storage,
            }
        )
    )
    return path


@pytest.mark.slow
def test_a_submitted_job_on_the_local_cluster_completes_with_its_results_in_storage(tmp_path, local_cluster):
    port, dashboard = local_cluster
    address = f"http://127.0.0.1:{dashboard}"
    storage = tmp_path / "shared"
    config = small_experiment(tmp_path, "submitted", str(storage))
    done = widthtune("submit", str(config), "--address", address, "--wait")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "submitted job widthtune-submitted-" in done.stdout
    assert f"ray job logs --address {address} --follow widthtune-submitted-" in done.stdout
    assert "SUCCEEDED" in done.stdout
    rows = read_trials(storage / "submitted" / "results")
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    assert all(r["epochs_trained"] == 2 for r in rows)
    # the submitted experiment's storage continues like any other, on the same cluster
    resumed = widthtune("resume", str(storage / "submitted"), env={"RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(read_trials(storage / "submitted" / "results")) == 2
    # a relative storage folder would vanish with the job's working folder: refused, nothing submitted
    relative = widthtune("submit", str(small_experiment(tmp_path, "rel", "runs")), "--address", address)
    assert relative.returncode == 2 and "Traceback" not in relative.stderr
    assert "storage: 'runs' is relative" in relative.stderr


def test_submit_to_an_address_where_no_dashboard_answers_is_one_line(tmp_path):
    port = free_port_from(8475)
    config = small_experiment(tmp_path, "nowhere", str(tmp_path / "runs"))
    done = widthtune("submit", str(config), "--address", f"http://127.0.0.1:{port}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"--address: no Ray dashboard answers at http://127.0.0.1:{port}" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_cluster_stop_without_a_cluster_and_bad_nodes_are_one_line():
    port = free_port_from(6590)
    done = widthtune("cluster", "stop", "--port", str(port))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"no local cluster was started from /tmp/widthtune-cluster-{port}" in done.stderr
    done = widthtune("cluster", "local", "--nodes", "0", "--port", str(port))
    assert done.returncode == 2 and "--nodes: 0 is not allowed; choose 1 or more" in done.stderr
