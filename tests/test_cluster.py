"""Running against RAY_ADDRESS: a local two-node Ray cluster, the runner connecting to it from another process."""

import os
import subprocess
import sys

import pytest
import yaml

from widthtune.results.store import read_trials


@pytest.mark.slow
def test_sweep_runs_on_a_two_node_cluster_through_ray_address(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    os.environ["RAY_AUTH_MODE"] = "disabled"
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        config = {
            "name": "on-cluster",
            "model": "resnet_cifar:depth=8",
            "data": {"name": "digits", "resolution": 8, "fraction": 0.3},
            "train": {"epochs": 1, "batch_size": 64},
            "method": "random",
            "cost_target": {"ratio": 0.5},
            "seeds": [0, 1],
            "storage": str(tmp_path),
        }
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        done = subprocess.run(
            [sys.executable, "-m", "widthtune.cli", "run", str(path)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        rows = read_trials(tmp_path / "on-cluster" / "results")
        assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
        # the request a cluster cannot meet is refused before anything starts
        path.write_text(yaml.safe_dump({**config, "name": "too-big", "resources": {"cpu": 1, "gpu": 1}}))
        refused = subprocess.run(
            [sys.executable, "-m", "widthtune.cli", "run", str(path)], env=env, capture_output=True, text=True
        )
        assert (
            refused.returncode == 2 and "resources.gpu: 1.0 per trial, but the largest node" in refused.stderr
        )
        assert "Traceback" not in refused.stderr and not (tmp_path / "too-big").exists()
    finally:
        cluster.shutdown()
