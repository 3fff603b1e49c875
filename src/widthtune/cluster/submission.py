"""`widthtune submit`: an experiment sent to a running Ray cluster as a Ray Job (Ray's job submission SDK, through
the head's dashboard), with its config and an optional working folder in the job's runtime environment."""

from __future__ import annotations

import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from widthtune.platform.config import ConfigError, ExperimentConfig

# the config's name inside the job's working folder
JOB_CONFIG = "widthtune-experiment.yaml"
# what never travels with a working folder (Ray uploads it through the head; results live in storage)
LEFT_BEHIND = (
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "runs",
    "mlruns",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "node_modules",
)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class SubmittedJob:
    """A submitted experiment: its Ray job, where the cluster writes it, and how to follow it."""

    job_id: str
    address: str
    experiment_dir: str

    @property
    def follow(self) -> str:
        """The command that streams the job's output."""
        return f"ray job logs --address {self.address} --follow {self.job_id}"

    @property
    def status(self) -> str:
        """The command that tells the job's state."""
        return f"ray job status --address {self.address} {self.job_id}"


def submitted_storage(config: ExperimentConfig) -> str:
    """Where the submitted experiment lives: an absolute folder the cluster sees, or a URI (a relative folder
    would be inside the job's temporary working folder, deleted with it)."""
    storage = config.storage
    if "://" in storage:
        if not Path(config.local_dir).expanduser().is_absolute():
            raise ConfigError(
                f"local_dir: {config.local_dir!r} is relative; a submitted job runs in a temporary folder on the "
                "cluster's head: give an absolute folder there (e.g. /mnt/shared/runs)"
            )
        return f"{config.local_dir.rstrip('/')}/{config.name}"
    if not Path(storage).expanduser().is_absolute():
        raise ConfigError(
            f"storage: {storage!r} is relative; a submitted job runs in a temporary folder on the cluster's head: "
            "give an absolute folder every node sees (e.g. --set storage=/mnt/shared/runs) or a URI (s3://...)"
        )
    return f"{storage.rstrip('/')}/{config.name}"


def stage_job(config: ExperimentConfig, working_dir: Path | None) -> Path:
    """A folder holding the working folder's files (if any) and the validated config, ready to upload."""
    stage = Path(tempfile.mkdtemp(prefix="widthtune-job-"))
    if working_dir is not None:
        source = Path(working_dir).expanduser()
        if not source.is_dir():
            raise ConfigError(f"--working-dir: {str(working_dir)!r} is not a folder")
        shutil.copytree(source, stage, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*LEFT_BEHIND))
    (stage / JOB_CONFIG).write_text(yaml.safe_dump(config.as_dict(), sort_keys=False))
    return stage


def submit_experiment(
    config: ExperimentConfig,
    address: str,
    working_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> SubmittedJob:
    """Submit `widthtune run` of the config as a Ray Job to the cluster whose dashboard is at `address`."""
    from ray.job_submission import JobSubmissionClient

    experiment_dir = submitted_storage(config)
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConfigError(
            f"--address: no Ray dashboard answers at {address} ({' '.join(str(error).split())[:200]}); give the "
            "head's dashboard, e.g. http://HEAD:8265 (the head needs ray[default])"
        ) from None
    stage = stage_job(config, working_dir)
    # The driver leaves the uploaded folder for the experiment's own: Ray may delete a job's working folder
    # while the job runs, once the last worker that used it exits (seen with Ray 2.60).
    home = shlex.quote(str(Path(experiment_dir).parent))
    copy = shlex.quote(f"{Path(experiment_dir).parent}/.{config.name}-submitted.yaml")
    entrypoint = f"mkdir -p {home} && cp {JOB_CONFIG} {copy} && cd {home} && widthtune run {copy}"
    try:
        job_id = client.submit_job(
            entrypoint=entrypoint,
            submission_id=f"widthtune-{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            runtime_env={"working_dir": str(stage), "env_vars": dict(env or {})},
            metadata={"widthtune.experiment": config.name, "widthtune.dir": experiment_dir},
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return SubmittedJob(job_id, address, experiment_dir)


def wait_for_job(
    job: SubmittedJob, timeout: float | None = None, say: Callable[[str], None] = print, poll: float = 2.0
) -> str:
    """Until the job ends (or `timeout`); its output is passed on line by line; returns its final status."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(job.address)
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = 0
    while True:
        status = str(client.get_job_status(job.job_id).value)
        lines = client.get_job_logs(job.job_id).splitlines()
        for line in lines[shown:]:
            say(line)
        shown = len(lines)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            return status
        time.sleep(poll)
