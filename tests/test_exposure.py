"""A local run lets nobody in: its Ray cluster keeps token authentication (the token in this user's ~/.ray), so
a process without the token is refused; servers widthtune prints commands for bind to 127.0.0.1."""

import os
import subprocess
import sys
import time

import pytest

from widthtune.platform.tracking import ui_command

DRIVER = """
import sys, time
from widthtune.platform.config import validate_config
from widthtune.platform.runner import start_ray
import ray
start_ray(validate_config({{"name": "exposure", "model": "resnet_cifar:depth=8", "method": "uniform",
                            "storage": {storage!r}}}))
assert ray.get(ray.remote(lambda: 1).remote()) == 1  # the run's own workers hold the token
print(ray.get_runtime_context().gcs_address, flush=True)
time.sleep(180)
"""
OUTSIDER = """
import ray
ray.init(address={address!r}, log_to_driver=False)
print("GOT IN", ray.cluster_resources())
"""


@pytest.mark.slow
def test_a_local_run_refuses_a_process_without_its_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(storage=str(tmp_path))],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        address = driver.stdout.readline().strip()
        assert ":" in address, f"the local run did not start: {driver.poll()}"
        outsider_env = {**env, "RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path)}  # no token, no ~/.ray
        started = time.time()
        outsider = subprocess.run(
            [sys.executable, "-c", OUTSIDER.format(address=address)],
            env=outsider_env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert "GOT IN" not in outsider.stdout, outsider.stdout
        assert outsider.returncode != 0 and "InvalidAuthToken" in outsider.stderr, outsider.stderr[-1500:]
        assert time.time() - started < 180
    finally:
        os.killpg(driver.pid, 9)
        driver.wait()


def test_the_mlflow_ui_command_binds_to_loopback():
    assert "--host 127.0.0.1" in ui_command("sqlite:////tmp/x/mlflow.db")
