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
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == "0006"
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


def test_the_json_columns_upgrade_keeps_the_rows_of_todays_schema(db_url: str) -> None:
    # A database as revision 0004 made it, with JSON text written as the old code did.
    import json
    from datetime import datetime

    from sqlalchemy.orm import Session

    from triage.db.models import AuditEvent, Result

    engine = create_db_engine(db_url)
    migrate(engine, "0004")
    now = datetime(2026, 12, 1, 12, 0, 0)
    slices = {"1.2.3.4.1": 0.91, "1.2.3.4.2": 0.125}
    timings = {"read": 0.5, "total": 2.25}
    detail = {"old": {"stack": 0.5}, "new": {"stack": 0.4}, "changed": ["thresholds.stack"]}
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO studies (id, study_instance_uid, first_received_at, last_received_at)"
                " VALUES (1, '1.2.3', :now, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO series (id, study_id, series_instance_uid, state, instance_count,"
                " first_received_at, last_received_at) VALUES"
                " (1, 1, '1.2.3.4', 'queued', 2, :now, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, series_id, state, attempts, created_at, updated_at)"
                " VALUES (1, 1, 'done', 1, :now, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO results (id, job_id, series_id, decision, slice_probabilities,"
                " flagged_sop_instance_uids, timings, created_at) VALUES"
                " (1, 1, 1, 'present', :slices, :flagged, :timings, :now),"
                " (2, 1, 1, 'undetermined', '{}', '[]', '{}', :now)"
            ),
            {
                "slices": json.dumps(slices),
                "flagged": json.dumps(["1.2.3.4.1"]),
                "timings": json.dumps(timings),
                "now": now,
            },
        )
        conn.execute(
            text(
                "INSERT INTO audit_events (kind, detail, created_at)"
                " VALUES ('thresholds_reloaded', :detail, :now)"
            ),
            {"detail": json.dumps(detail), "now": now},
        )

    migrate(engine)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == "0006"
    if engine.dialect.name == "postgresql":
        types = {c["name"]: str(c["type"]) for c in inspect(engine).get_columns("results")}
        assert types["slice_probabilities"] == types["timings"] == "JSON"
    with Session(engine) as session:
        first, second = session.query(Result).order_by(Result.id).all()
        assert first.slice_probabilities == slices
        assert first.flagged_sop_instance_uids == ["1.2.3.4.1"]
        assert first.timings == timings
        assert (second.slice_probabilities, second.flagged_sop_instance_uids) == ({}, [])
        event = session.query(AuditEvent).filter_by(kind="thresholds_reloaded").one()
        assert event.detail == detail
        # And what the new code writes reads back the same way.
        session.add(AuditEvent(kind="deliveries_retried", detail={"count": 2}, created_at=now))
        session.commit()
        assert session.query(AuditEvent).filter_by(kind="deliveries_retried").one().detail == {
            "count": 2
        }
    engine.dispose()
