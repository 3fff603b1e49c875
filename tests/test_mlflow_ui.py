"""The MLflow UI shows a widthtune-shaped store: a classic ML experiment, a parent run with summary metrics and
nested trial runs with theirs. `mlflow ui` runs on 127.0.0.1; headless Chromium renders the pages (DOM text and
screenshots, saved in the test's folder and copied to .test-output/mlflow_ui/ in the checkout)."""

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

STABLE_OUTPUT = Path(__file__).resolve().parents[1] / ".test-output" / "mlflow_ui"
PARENT = "widthtune-sweep-20270101-120000"
CHILDREN = {"direct__trial-alpha": 0.8125, "direct__trial-beta": 0.8750}
SUMMARY = "direct/macs x0.5/test_acc_mean"


def _chromium() -> str:
    """Debian's chromium, installed here when it is missing and apt-get can (else the test is skipped)."""
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            timeout=900,
            check=False,
        )
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed and `apt-get install -y chromium` was not possible here")
    return found


def _store(directory: Path) -> tuple[str, str, dict[str, str]]:
    """A classic ML experiment with a parent run and two nested trial runs, through the real MLflow client."""
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(
        "ui-check",
        artifact_location=(directory / "mlartifacts").as_uri(),
        tags={"mlflow.experimentKind": "custom_model_development"},
    )
    parent = client.create_run(experiment, run_name=PARENT, tags={"widthtune.role": "experiment"}).info.run_id
    client.log_batch(parent, metrics=[Metric(SUMMARY, 0.8650, 0, 0)])
    children = {}
    for name, acc in CHILDREN.items():
        run = client.create_run(
            experiment, run_name=name, tags={"mlflow.parentRunId": parent, "widthtune.role": "trial"}
        ).info.run_id
        metrics = [Metric("val_acc", acc * e / 3, 1000 * e, e) for e in (1, 2, 3)]
        client.log_batch(run, metrics=metrics, params=[Param("train.lr", "0.05")])
        client.set_terminated(run)
        children[name] = run
    client.set_terminated(parent)
    return uri, experiment, children


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_ui(tmp_path):
    """`mlflow ui` on a fresh store; yields (base URL, experiment id, parent run id, child run ids)."""
    uri, experiment, children = _store(tmp_path)
    with open(tmp_path / "mlflow-ui.log", "w") as log:
        yield from _serve(uri, experiment, children, log, tmp_path / "mlflow-ui.log")


def _serve(uri, experiment, children, log, log_path):
    """Start the server in its own session, wait for /health, yield, and stop it and its workers."""
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--backend-store-uri", uri],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow ui did not answer /health: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        parent = next(
            r.info.run_id
            for r in MlflowClient(tracking_uri=uri).search_runs([experiment])
            if r.info.run_name == PARENT
        )
        yield base, experiment, parent, children
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own session: it and the workers it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _render(chromium: str, url: str, shot: Path, profile: Path) -> str:
    """The page's text after the SPA settled (virtual time), with a screenshot of it."""
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            "--window-size=1400,900",
            f"--screenshot={shot}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", done.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def _page(chromium: str, url: str, shot: Path, expected: list[str]) -> str:
    """Render until every expected string shows (a second try on a slow machine)."""
    text = ""
    for attempt in range(2):
        text = _render(chromium, url, shot, shot.parent / f"profile-{shot.stem}-{attempt}")
        if all(e in text for e in expected):
            break
    STABLE_OUTPUT.mkdir(parents=True, exist_ok=True)
    if shot.is_file():
        shutil.copy(shot, STABLE_OUTPUT / shot.name)
    (STABLE_OUTPUT / f"{shot.stem}.txt").write_text(text)
    return text


@pytest.mark.slow
def test_runs_page_shows_the_parent_and_each_trial_page_its_metrics_and_parent(mlflow_ui, tmp_path):
    chromium = _chromium()
    base, experiment, parent, children = mlflow_ui
    ml = "workflowType=machine_learning"
    # what a fresh browser opens on the experiment's plain URL, kept for a look (MLflow 3.17 chooses the GenAI or
    # the model-training layout from the browser's saved choice and the URL's workflowType, not the experiment)
    plain = _page(
        chromium, f"{base}/#/experiments/{experiment}", tmp_path / "experiment-default.png", ["ui-check"]
    )
    assert "ui-check" in plain

    runs = _page(chromium, f"{base}/#/experiments/{experiment}?{ml}", tmp_path / "runs.png", [PARENT])
    assert PARENT in runs and "Run Name" in runs
    assert f"{1 + len(children)} matching runs" in runs  # the trials are nested under the parent's row
    assert (tmp_path / "runs.png").stat().st_size > 10_000

    summary = _page(
        chromium, f"{base}/#/experiments/{experiment}/runs/{parent}?{ml}", tmp_path / "parent.png", [SUMMARY]
    )
    assert PARENT in summary and SUMMARY in summary and "0.865" in summary

    for name, run_id in children.items():
        shot = tmp_path / f"trial-{name.rsplit('-', 1)[-1]}.png"
        text = _page(
            chromium, f"{base}/#/experiments/{experiment}/runs/{run_id}?{ml}", shot, [name, "val_acc"]
        )
        assert name in text and "val_acc" in text and f"{CHILDREN[name]:g}" in text
        assert re.search(rf"Parent run\s+{re.escape(PARENT)}", text)
        assert "train.lr" in text and "Finished" in text
