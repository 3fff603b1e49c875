"""The names in an experiment folder that more than one layer reads, and whether it can be written."""

import os
from pathlib import Path

# the experiment's state: config, hash, MLflow ids, study and artifact status (written by the platform)
EXPERIMENT_FILE = "experiment.json"


class NotWritableError(ValueError):
    """A folder that must take new files cannot; the message names it and what to do."""


def check_writable(directory: Path, why: str) -> None:
    """The folder takes new files (tried, not assumed: a read-only mount or an immutable folder refuses root too)."""
    probe = Path(directory) / f".widthtune-write-test-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise NotWritableError(f"{str(directory)!r} is not writable ({error.strerror}); {why}") from None
