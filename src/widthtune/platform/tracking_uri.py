"""Where MLflow lives: a URI checked before anything is created (light: no MLflow import)."""

from __future__ import annotations

import urllib.error
import urllib.request

# schemes of an MLflow backend store or tracking server (MLflow 3.17 refuses the plain file store)
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def check_tracking_uri(uri: str, *, reach: bool = True, timeout: float = 3.0) -> None:
    """A tracking URI MLflow can use; a server must answer within `timeout` seconds (checked before a run)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""
    if scheme not in TRACKING_SCHEMES:
        raise ValueError(
            f"tracking_uri: {uri!r} has no MLflow scheme; use http://HOST:PORT (an MLflow server), "
            f"sqlite:////abs/path/mlflow.db, or leave it out for sqlite in the experiment folder "
            f"(schemes: {', '.join(TRACKING_SCHEMES)})"
        )
    if reach and scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                pass
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise ValueError(
                f"tracking_uri: {uri} did not answer within {timeout:g} s ({reason}); start the server "
                "(mlflow server --host 127.0.0.1 --port PORT --backend-store-uri sqlite:////abs/mlflow.db) "
                "or leave tracking_uri out"
            ) from None
