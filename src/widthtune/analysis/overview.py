"""What the report's header says about an experiment (config hash, dates, wall time) and where its MLflow runs are,
read from `experiment.json` when it is there (the report also works on a bare results store)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from widthtune.results.files import EXPERIMENT_FILE

ML_LAYOUT = "workflowType=machine_learning"


def state_if_readable(directory: Path) -> dict[str, Any]:
    """The experiment's saved state, or {} when the file is missing or unreadable."""
    path = Path(directory) / EXPERIMENT_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


def mlflow_run_url(state: dict[str, Any], run_id: str | None) -> str | None:
    """The run's page in the MLflow UI when the tracking URI is a server (http or https), else None."""
    tracking = state.get("tracking") or {}
    uri, experiment = str(tracking.get("uri") or ""), tracking.get("experiment_id")
    if not run_id or experiment is None or not uri.startswith(("http://", "https://")):
        return None
    # MLflow 3's UI picks its GenAI or model-training layout from the URL (else the browser's last choice)
    return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}?{ML_LAYOUT}"


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(seconds))


def duration_text(seconds: float | None) -> str:
    """Seconds as h/min/s for a reader."""
    if seconds is None or seconds != seconds:
        return "-"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs:.0f} s" if minutes else f"{secs:.1f} s"


def header_facts(state: dict[str, Any], rows: list[dict[str, Any]], now: float) -> list[tuple[str, str]]:
    """The header's (name, value) lines: kind, config hash, dates, trial counts, wall time, MLflow store."""
    hashes = sorted({r["config_hash"] for r in rows if r["config_hash"]})
    config_hash = state.get("config_hash") or ", ".join(hashes) or "-"
    finished = [r["finished_at"] for r in rows if r["finished_at"] is not None]
    statuses = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped", "errored")}
    wall = sum(r["wall_seconds"] or 0.0 for r in rows)
    facts = [
        ("kind", str(state.get("kind") or "-")),
        ("config hash", config_hash),
        ("report written", _when(now)),
        ("experiment created", _when(state.get("created"))),
        ("trials", f"{len(rows)} ({', '.join(f'{n} {s}' for s, n in statuses.items())})"),
        ("wall time, summed over trials", duration_text(wall)),
        (
            "first to last finished trial",
            duration_text(max(finished) - min(finished)) if finished else "-",
        ),
    ]
    tracking = state.get("tracking") or {}
    if tracking.get("uri"):
        facts.append(("MLflow", f"{tracking['uri']} (experiment {tracking.get('experiment_id', '-')})"))
    return facts
