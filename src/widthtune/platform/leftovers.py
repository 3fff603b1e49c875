"""What a killed driver leaves running: the local Ray cluster it started (its agents outlive a SIGKILL).

Each run records its local Ray session in the experiment folder; the next `run`/`resume` of that experiment
stops whatever of a dead driver's session still runs, so nothing of it disturbs the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

SESSION_FILE = ".ray-session.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def session_processes(session_dir: str) -> list[int]:
    """Processes whose command line names the session's folder (gcs, raylet, agents, monitors)."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if session_dir in cmdline:
            found.append(int(entry.name))
    return found


def remember_ray_session(directory: Path) -> None:
    """Record this driver and the local Ray session it started."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is None or not node.head:  # connected to a cluster someone else runs: not ours to stop
        return
    record = {"driver_pid": os.getpid(), "session_dir": node.get_session_dir_path()}
    (Path(directory) / SESSION_FILE).write_text(json.dumps(record))


def clean_leftovers(directory: Path, grace: float = 3.0) -> list[int]:
    """Stop what a dead driver's Ray session left running; returns the processes stopped."""
    path = Path(directory) / SESSION_FILE
    if not path.is_file():
        return []
    try:
        record = json.loads(path.read_text())
        pid, session = int(record["driver_pid"]), str(record["session_dir"])
    except (ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        return []
    if pid == os.getpid() or _alive(pid):
        return []  # that driver still runs (or is this process, whose Ray may still be in use)
    pids = session_processes(session) if session else []
    for target in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for target in pids:
        if _alive(target):
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return pids
