"""``/metrics`` costs the same with ten results or a hundred thousand: aggregate queries
only, so the rows that reach Python do not grow with history."""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, event, insert
from support import open_db

from triage.db import session_factory
from triage.db.models import Decision, Job, JobState, Result, Series, SeriesState, Study, utcnow
from triage.web.metrics import metrics_registry, render_metrics


class _CountingCursor(sqlite3.Cursor):
    """A DB-API cursor that counts the rows handed to Python."""

    fetched = 0

    def fetchone(self) -> Any:
        row = super().fetchone()
        _CountingCursor.fetched += row is not None
        return row

    def fetchmany(self, size: int = 1) -> list[Any]:
        rows = super().fetchmany(size)
        _CountingCursor.fetched += len(rows)
        return rows

    def fetchall(self) -> list[Any]:
        rows = super().fetchall()
        _CountingCursor.fetched += len(rows)
        return rows


class _CountingConnection(sqlite3.Connection):
    def cursor(self, factory: Any = _CountingCursor) -> Any:  # type: ignore[override]
        return super().cursor(factory)


def _fill(url: str, results: int) -> None:
    """``results`` analysed series, one study each of ten, in bulk; latency i % 400 s."""
    sessions = open_db(url)
    completed = utcnow() - timedelta(days=1)
    with sessions() as session, session.begin():
        session.execute(
            insert(Study),
            [{"id": i + 1, "study_instance_uid": f"1.2.{i}"} for i in range(results // 10 + 1)],
        )
        session.execute(
            insert(Series),
            [
                {
                    "id": i + 1,
                    "study_id": i // 10 + 1,
                    "series_instance_uid": f"1.3.{i}",
                    "state": SeriesState.QUEUED,
                    "completed_at": completed,
                }
                for i in range(results)
            ],
        )
        session.execute(
            insert(Job),
            [{"id": i + 1, "series_id": i + 1, "state": JobState.DONE} for i in range(results)],
        )
        session.execute(
            insert(Result),
            [
                {
                    "job_id": i + 1,
                    "series_id": i + 1,
                    "decision": Decision.ABSENT,
                    "created_at": completed + timedelta(seconds=i % 400),
                }
                for i in range(results)
            ],
        )


def _scrape(url: str) -> tuple[dict[str, float], int, int, float]:
    """The samples, the statements run, the rows fetched, and the seconds it took."""
    engine = create_engine(url, connect_args={"factory": _CountingConnection})
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    registry = metrics_registry(session_factory(engine), 60)
    _CountingCursor.fetched = 0
    started = time.perf_counter()
    text = render_metrics(registry).decode()
    seconds = time.perf_counter() - started
    engine.dispose()
    samples = {
        s.name + str(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return samples, len(statements), _CountingCursor.fetched, seconds


def test_a_scrape_fetches_the_same_rows_with_ten_results_or_a_hundred_thousand(
    tmp_path: Path,
) -> None:
    small, large = f"sqlite:///{tmp_path / 'small.db'}", f"sqlite:///{tmp_path / 'large.db'}"
    _fill(small, 10)
    _fill(large, 100_000)
    few, few_statements, few_rows, few_seconds = _scrape(small)
    many, many_statements, many_rows, many_seconds = _scrape(large)
    print(
        f"/metrics scrape: 10 results {few_seconds * 1000:.1f} ms, "
        f"100,000 results {many_seconds * 1000:.1f} ms"
    )
    assert many_statements == few_statements
    assert many_rows == few_rows < 50
    assert few["triage_job_latency_seconds_count[]"] == 10
    assert many["triage_job_latency_seconds_count[]"] == 100_000
    # i % 400 seconds for i < 100,000: 250 full cycles of 0..399.
    assert many["triage_job_latency_seconds_sum[]"] == 250 * sum(range(400))
    assert many["triage_job_latency_seconds_bucket[('le', '5.0')]"] == 250 * 6
    assert many["triage_job_latency_seconds_bucket[('le', '300.0')]"] == 250 * 301
    assert many["triage_job_latency_seconds_bucket[('le', '+Inf')]"] == 100_000
    assert many["triage_jobs[('state', 'done')]"] == 100_000


def test_the_latency_histogram_is_counted_alike_on_sqlite_and_postgresql(db_url: str) -> None:
    _fill(db_url, 1000)
    text = render_metrics(metrics_registry(open_db(db_url), 60)).decode()
    samples = {
        s.name + str(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples["triage_job_latency_seconds_count[]"] == 1000
    # i % 400 seconds for i < 1000: 0..399 twice, then 0..199.
    assert samples["triage_job_latency_seconds_sum[]"] == 2 * sum(range(400)) + sum(range(200))
    assert samples["triage_job_latency_seconds_bucket[('le', '30.0')]"] == 3 * 31
    assert samples["triage_job_latency_seconds_bucket[('le', '300.0')]"] == 2 * 301 + 200
