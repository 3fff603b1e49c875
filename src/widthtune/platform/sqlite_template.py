"""A new experiment's sqlite tracking store starts as a copy of an empty, migrated one.

MLflow builds a new sqlite store by running its whole chain of schema migrations: seconds of CPU, spent on the
cores the first trials start on. The result is the same empty schema every time for one MLflow version, so it is
built once per version into widthtune's cache folder and copied from there. A store that cannot be seeded (no
writable cache) is left for MLflow to build as before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

CACHE_ENV = "WIDTHTUNE_CACHE_DIR"


def cache_dir() -> Path:
    """Where widthtune keeps what it can rebuild: $WIDTHTUNE_CACHE_DIR, else $XDG_CACHE_HOME/widthtune."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "widthtune"


def template_path() -> Path:
    """The empty store for the installed MLflow (its schema changes only with MLflow's version)."""
    import mlflow

    return cache_dir() / f"mlflow-{mlflow.__version__}-empty.db"


def _schema_version(database: Path) -> str | None:
    """The store's alembic revision, or None when the file is not a migrated MLflow store."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def _build_template(template: Path) -> None:
    """Let MLflow migrate a new store next to the template's place, then move it there in one step."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    template.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=".building-", suffix=".db", dir=template.parent)
    os.close(handle)
    os.unlink(scratch)  # MLflow creates the file itself
    try:
        # the Default experiment MLflow always makes: its folder relative, as no widthtune run uses it
        store = SqlAlchemyStore(f"sqlite:///{scratch}", "mlruns")
        store.engine.dispose()
        if _schema_version(Path(scratch)) is None:
            raise sqlite3.DatabaseError(f"MLflow left no schema version in {scratch}")
        os.replace(scratch, template)
    finally:
        Path(scratch).unlink(missing_ok=True)


def seed_sqlite_store(database: Path) -> bool:
    """Copy the empty template to `database` (building the template first when missing); False, and nothing
    written, when `database` exists already or the cache folder cannot be used (MLflow then builds it)."""
    if database.exists():
        return False
    template = template_path()
    partial = database.with_name(database.name + ".partial")
    try:
        if _schema_version(template) is None:
            _build_template(template)
        shutil.copyfile(template, partial)
        os.replace(partial, database)
    except Exception:  # any failure here (a read-only cache, MLflow's own errors): MLflow builds the store
        partial.unlink(missing_ok=True)
        return False
    return True
