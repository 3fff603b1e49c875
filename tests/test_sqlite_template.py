"""A new experiment's sqlite store is a copy of an empty migrated one: the same schema MLflow builds, built once per
MLflow version, never over an existing store, and MLflow's own build whenever the cache cannot be used."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from widthtune.platform.sqlite_template import CACHE_ENV, seed_sqlite_store, template_path
from widthtune.platform.tracking import open_parent_run


def _clauses(sql: str) -> tuple[str, ...]:
    """A statement's lines without their order: the order in which an alembic batch migration re-creates a table's
    constraints varies between runs, the columns and constraints themselves do not."""
    return tuple(sorted(line.strip().rstrip(",").strip() for line in sql.splitlines() if line.strip()))


def _schema(database: Path) -> set[tuple[str, str, tuple[str, ...]]]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        rows = connection.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        return {(kind, name, _clauses(sql or "")) for kind, name, sql in rows}


def _revision(database: Path) -> str:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def test_a_seeded_store_has_mlflows_own_schema_and_takes_runs(tmp_path, cache):
    seeded = tmp_path / "seeded" / "mlflow.db"
    seeded.parent.mkdir()
    assert seed_sqlite_store(seeded)
    built = tmp_path / "built" / "mlflow.db"
    built.parent.mkdir()
    MlflowClient(f"sqlite:///{built}").search_experiments()  # MLflow migrates a new store itself
    assert _schema(seeded) == _schema(built) and _revision(seeded) == _revision(built)
    tracking = open_parent_run(f"sqlite:///{seeded}", "exp", tmp_path / "art", "parent", {})
    run = MlflowClient(tracking.uri).get_run(tracking.parent_run_id)
    assert run.info.status == "RUNNING" and run.info.experiment_id == tracking.experiment_id


def test_the_template_is_built_once_and_an_existing_store_is_never_replaced(tmp_path, cache):
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    assert seed_sqlite_store(first)
    template = template_path()
    assert template.parent == cache and template.is_file()
    built_at = template.stat().st_mtime_ns
    assert seed_sqlite_store(second)
    assert template.stat().st_mtime_ns == built_at  # copied, not rebuilt
    second.write_bytes(b"a store someone already has")
    assert not seed_sqlite_store(second)
    assert second.read_bytes() == b"a store someone already has"
    assert not list(tmp_path.glob("*.partial"))


def test_a_damaged_template_is_built_again(tmp_path, cache):
    cache.mkdir()
    template_path().write_bytes(b"not a database")
    database = tmp_path / "mlflow.db"
    assert seed_sqlite_store(database)
    assert _revision(database) == _revision(template_path())


def test_without_a_usable_cache_nothing_is_written_and_mlflow_builds_the_store(tmp_path, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv(CACHE_ENV, str(blocked / "widthtune"))
    database = tmp_path / "mlflow.db"
    assert not seed_sqlite_store(database)
    assert not database.exists() and not list(tmp_path.glob("*.partial"))
    tracking = open_parent_run(f"sqlite:///{database}", "exp", tmp_path / "art", "parent", {})
    assert MlflowClient(tracking.uri).get_run(tracking.parent_run_id).info.status == "RUNNING"
