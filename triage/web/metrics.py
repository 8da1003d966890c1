"""Prometheus figures, read from the database at scrape time.

The receiver, scheduler and workers may run in other processes or on other hosts, so
in-memory counters in this process would see only part of the work. The database sees
all of it: each scrape counts rows, with aggregate queries only (a fixed number of
statements, each returning a handful of rows), so its cost does not grow with history.
Counters derived from rows drop when retention deletes old studies; Prometheus'
``rate()`` treats such a drop as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from triage.db.models import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    WorkerHeartbeat,
    utcnow,
)
from triage.logs import get_logger

log = get_logger(__name__)

#: Upper bounds, in seconds, of the job latency histogram: from "read in time for the
#: next patient" to "an hour late".
LATENCY_BUCKETS = (5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class TriageCollector(Collector):
    """Counts rows for Prometheus; one instance per registry.

    Parameters
    ----------
    sessions : sessionmaker
        The process's session factory.
    worker_alive_seconds : float
        A worker whose heartbeat is older than this is counted as dead.
    """

    def __init__(self, sessions: sessionmaker[Session], worker_alive_seconds: float) -> None:
        self._sessions = sessions
        self._worker_alive_seconds = worker_alive_seconds

    def collect(self) -> Iterator[Metric]:
        """Yield every figure; ``triage_database_up`` is 0 when the database is unreachable."""
        up = GaugeMetricFamily(
            "triage_database_up", "1 when the database answered this scrape, 0 when not."
        )
        try:
            families = self._read()
        except SQLAlchemyError as err:
            log.warning("metrics_database_error", error=str(err).splitlines()[0])
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Metric]:
        now = utcnow()
        with self._sessions() as session:
            instances = session.scalar(select(func.count()).select_from(Instance)) or 0
            job_counts = dict(
                session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
            )
            oldest_queued = session.scalar(
                select(func.min(Job.updated_at)).where(Job.state == JobState.QUEUED)
            )
            latency = _latency_histogram(session)
            delivery_rows = session.execute(
                select(
                    Delivery.destination, Delivery.state, func.count(), func.sum(Delivery.attempts)
                ).group_by(Delivery.destination, Delivery.state)
            ).all()
            alive = session.scalar(
                select(func.count())
                .select_from(WorkerHeartbeat)
                .where(
                    WorkerHeartbeat.last_seen_at
                    >= now - timedelta(seconds=self._worker_alive_seconds)
                )
            )

        received = CounterMetricFamily(
            "triage_instances_received",
            "DICOM instances received and stored (rows in the database).",
        )
        received.add_metric([], instances)

        depth = GaugeMetricFamily("triage_queue_depth", "Jobs waiting for a worker.")
        depth.add_metric([], job_counts.get(JobState.QUEUED, 0))

        jobs = GaugeMetricFamily("triage_jobs", "Jobs by state.", labels=["state"])
        for job_state in JobState:
            jobs.add_metric([job_state.value], job_counts.get(job_state, 0))

        oldest = GaugeMetricFamily(
            "triage_oldest_queued_job_age_seconds",
            "How long the longest-waiting queued job has waited; 0 when none waits.",
        )
        oldest.add_metric([], _age(now, oldest_queued))

        failures = CounterMetricFamily(
            "triage_delivery_failures",
            "Failed delivery attempts by destination: every attempt of a delivery that "
            "is not sent, and all but the last of one that is.",
            labels=["destination"],
        )
        deliveries = GaugeMetricFamily(
            "triage_deliveries",
            "Deliveries by destination and state.",
            labels=["destination", "state"],
        )
        failed_by_destination: dict[str, int] = {}
        for destination, state, count, attempts in delivery_rows:
            deliveries.add_metric([destination, state.value], count)
            failed = int(attempts or 0) - (count if state == DeliveryState.SENT else 0)
            failed_by_destination[destination] = failed_by_destination.get(destination, 0) + max(
                failed, 0
            )
        for destination, failed in sorted(failed_by_destination.items()):
            failures.add_metric([destination], failed)

        workers = GaugeMetricFamily(
            "triage_workers_alive", "Inference workers whose heartbeat is recent."
        )
        workers.add_metric([], alive or 0)
        return [received, depth, jobs, oldest, latency, failures, deliveries, workers]


def _age(now: datetime, then: datetime | None) -> float:
    return 0.0 if then is None else max((now - then).total_seconds(), 0.0)


def _seconds(session: Session, later: Any, earlier: Any) -> ColumnElement[Any]:
    """``later - earlier`` in seconds, in SQL (SQLite has no interval type)."""
    if session.get_bind().dialect.name == "sqlite":
        # julianday's double carries ~50 microseconds at today's dates: rounded to the
        # millisecond, 30 s is 30.0, not 30.00004, and lands in its bucket.
        return func.round((func.julianday(later) - func.julianday(earlier)) * 86400.0, 3)
    return func.extract("epoch", later - earlier)


def _latency_histogram(session: Session) -> HistogramMetricFamily:
    """The job latency histogram, counted by the database in one aggregate query: a
    scrape fetches the same few rows with ten results or a hundred thousand."""
    # Each result's latency, computed once per row (MATERIALIZED: the aggregates below
    # would otherwise each evaluate the date arithmetic again). An older result of a
    # series that was reopened and completed again since is left out: measured against
    # the new completion time it means nothing.
    latencies = (
        select(_seconds(session, Result.created_at, Series.completed_at).label("seconds"))
        .join(Series, Series.id == Result.series_id)
        .where(Series.completed_at.is_not(None))
        .cte("latencies")
        .prefix_with("MATERIALIZED")
    )
    seconds = latencies.c.seconds
    row = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(seconds), 0.0),
            *(
                func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0)
                for bound in LATENCY_BUCKETS
            ),
        ).where(seconds >= 0)
    ).one()
    count, total, *cumulative = row
    buckets = [
        (repr(bound), float(n)) for bound, n in zip(LATENCY_BUCKETS, cumulative, strict=True)
    ]
    buckets.append(("+Inf", float(count)))
    histogram = HistogramMetricFamily(
        "triage_job_latency_seconds",
        "From a series being complete to its result: queueing plus inference.",
    )
    histogram.add_metric([], buckets, float(total))
    return histogram


def metrics_registry(
    sessions: sessionmaker[Session], worker_alive_seconds: float
) -> CollectorRegistry:
    """A registry of its own with the triage collector, so tests and apps don't share one."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TriageCollector(sessions, worker_alive_seconds))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
