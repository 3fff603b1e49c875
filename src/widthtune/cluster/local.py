"""A real multi-node Ray cluster on 127.0.0.1 (`ray start --head` plus worker nodes as separate processes).

For trying the cluster commands on one machine, and for the fault tests: every node gets its own free ports and
the cluster one `--temp-dir` of its own, so stopping it ends exactly its processes (found by that folder in their
command lines) and never another Ray on the machine (no `ray stop`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from widthtune.platform.leftovers import session_processes

STATE_FILE = "cluster.json"
# Ray's defaults: what `widthtune submit --address` and `RAY_ADDRESS` name unless told otherwise
DEFAULT_GCS_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
# a node's object store on one machine: small, the nodes share its memory
OBJECT_STORE_BYTES = 100 * 1024 * 1024
HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    """The local cluster could not start, or there is none to stop."""


@dataclass(frozen=True)
class LocalCluster:
    """A started local cluster: where it listens and the folder that names its processes."""

    address: str
    dashboard: str
    temp_dir: str
    nodes: int
    cpus_per_node: float

    def save(self) -> None:
        """Write the cluster's record into its folder (what `stop` reads)."""
        (Path(self.temp_dir) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def default_temp_dir(gcs_port: int) -> Path:
    """The cluster's own folder, named by its GCS port (short: Ray's socket paths must stay under 108 bytes)."""
    return Path(f"/tmp/widthtune-cluster-{gcs_port}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return True
    return False


def _node_ports() -> list[str]:
    """Ports a node would otherwise take at Ray's fixed defaults (two nodes on one host would collide)."""
    return [
        f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
    ]


def _ray_start(arguments: list[str], temp_dir: Path) -> None:
    command = [str(Path(sys.executable).with_name("ray")), "start", *arguments]
    if not Path(command[0]).is_file():
        command = [sys.executable, "-m", "ray.scripts.scripts", "start", *arguments]
    # the nodes run this Python: a job's `widthtune` and `python` are the ones that started the cluster
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PATH": path}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        stop_local_cluster(temp_dir)
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        tail = lines[-1] if lines else f"exit status {done.returncode}"
        raise ClusterError(f"`ray start {' '.join(arguments[:2])}` failed: {tail}")


def _wait_for_nodes(address: str, nodes: int, timeout: float) -> None:
    """Until the cluster's GCS lists `nodes` alive nodes."""
    command = [
        sys.executable,
        "-c",
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False); "
        "print(sum(n['Alive'] for n in ray.nodes()))",
        address,
    ]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""})
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(nodes)]:
            return
        time.sleep(1)
    raise ClusterError(f"the local cluster at {address} did not show {nodes} nodes within {timeout:.0f} s")


def start_local_cluster(
    nodes: int = 2,
    cpus_per_node: float = 1,
    gcs_port: int = DEFAULT_GCS_PORT,
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    temp_dir: Path | None = None,
    timeout: float = 120,
) -> LocalCluster:
    """Start a head and `nodes - 1` worker nodes on 127.0.0.1; returns once every node is alive."""
    if nodes < 1:
        raise ClusterError(f"--nodes: {nodes} is not allowed; choose 1 or more")
    if cpus_per_node <= 0:
        raise ClusterError(f"--cpus-per-node: {cpus_per_node} is not allowed; choose a number > 0")
    for flag, port in (("--port", gcs_port), ("--dashboard-port", dashboard_port)):
        if _port_taken(port):
            raise ClusterError(f"{flag}: {port} is in use on {HOST} (another cluster?); choose another port")
    folder = Path(temp_dir) if temp_dir is not None else default_temp_dir(gcs_port)
    if (folder / STATE_FILE).is_file() and session_processes(str(folder)):
        raise ClusterError(
            f"a local cluster already runs from {folder}; stop it with `widthtune cluster stop`"
        )
    folder.mkdir(parents=True, exist_ok=True)
    address = f"{HOST}:{gcs_port}"
    cpus = f"--num-cpus={cpus_per_node:g}"
    common = [
        f"--node-ip-address={HOST}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        "--num-gpus=0",
        "--disable-usage-stats",
        *_node_ports(),
    ]
    head = [
        "--head",
        f"--port={gcs_port}",
        f"--temp-dir={folder}",
        "--include-dashboard=true",
        f"--dashboard-host={HOST}",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={_free_port()}",
        cpus,
        *common,
    ]
    _ray_start(head, folder)
    for _ in range(nodes - 1):
        common = [*common[:4], *_node_ports()]
        _ray_start([f"--address={address}", cpus, *common], folder)
    cluster = LocalCluster(address, f"http://{HOST}:{dashboard_port}", str(folder), nodes, cpus_per_node)
    cluster.save()
    try:
        _wait_for_nodes(address, nodes, timeout)
    except ClusterError:
        stop_local_cluster(folder)
        raise
    return cluster


def read_local_cluster(temp_dir: Path) -> LocalCluster:
    """The record of the cluster started from `temp_dir`."""
    path = Path(temp_dir) / STATE_FILE
    if not path.is_file():
        raise ClusterError(f"no local cluster was started from {temp_dir} (no {STATE_FILE} there)")
    return LocalCluster(**json.loads(path.read_text()))


def node_processes(temp_dir: Path) -> list[int]:
    """Every process of the cluster (gcs, raylets, dashboard, agents, workers): their command lines name its folder."""
    return session_processes(str(Path(temp_dir).resolve()) + "/")


def stop_local_cluster(temp_dir: Path, grace: float = 10.0) -> list[int]:
    """End the cluster's own processes (SIGTERM, then SIGKILL after `grace`) and wait until they are gone.

    Processes that start while the cluster shuts down (a raylet restarting a worker) get the same signals.
    """
    pids = node_processes(temp_dir)
    ended: set[tuple[int, int]] = set()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        deadline = time.monotonic() + wait
        while (left := node_processes(temp_dir)) and time.monotonic() < deadline:
            for pid in left:
                if (pid, sig) not in ended:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                    ended.add((pid, sig))
            time.sleep(0.2)
    (Path(temp_dir) / STATE_FILE).unlink(missing_ok=True)
    return pids
