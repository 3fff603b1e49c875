"""Library chatter goes to the experiment's `driver.log`, so nothing writes over the progress display."""

from __future__ import annotations

import logging
from pathlib import Path

LOG_FILE = "driver.log"
# the libraries whose INFO (and warnings) a user of the command line does not need on screen
LIBRARY_LOGGERS = ("ray", "optuna", "mlflow", "alembic", "urllib3", "filelock", "py.warnings")


def route_library_logs(directory: Path) -> Path:
    """Send the libraries' log records (INFO and up) to `directory/driver.log` instead of the terminal."""
    path = Path(directory) / LOG_FILE
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.captureWarnings(True)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:  # optuna adds its own stderr handler on first use unless told not to
        import optuna

        optuna.logging.disable_default_handler()
    except ImportError:
        pass
    return path
