"""The database layer on SQLite and PostgreSQL: schema by migration, SQLite settings."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text

from triage.db import create_db_engine, migrate


def test_migrations_create_the_schema_and_are_idempotent(db_url: str) -> None:
    engine = create_db_engine(db_url)
    migrate(engine)
    migrate(engine)  # a restart with nothing to upgrade changes nothing
    tables = set(inspect(engine).get_table_names())
    assert {"studies", "series", "instances", "jobs", "alembic_version"} <= tables
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == "0004"
    engine.dispose()


def test_sqlite_is_wal_with_foreign_keys_and_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "triage.db"
    engine = create_db_engine(f"sqlite:///{path}", busy_timeout_ms=1234)
    migrate(engine)
    with engine.connect() as conn:
        assert conn.scalar(text("PRAGMA journal_mode")) == "wal"
        assert conn.scalar(text("PRAGMA foreign_keys")) == 1
        assert conn.scalar(text("PRAGMA busy_timeout")) == 1234
    assert path.stat().st_mode & 0o777 == 0o600
    engine.dispose()


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    import pytest

    from triage.errors import DatabaseError

    engine = create_db_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(DatabaseError, match="cannot create or upgrade the database schema"):
        migrate(engine)
