"""Prometheus figures, read from the database at scrape time.

The receiver, scheduler and workers may run in other processes or on other hosts, so
in-memory counters in this process would see only part of the work. The database sees
all of it: each scrape counts rows. Counters derived from rows drop when retention
deletes old studies; Prometheus' ``rate()`` treats such a drop as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
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
            latency_pairs = session.execute(
                select(Result.created_at, Series.completed_at).join(
                    Series, Series.id == Result.series_id
                )
            ).all()
            delivery_rows = session.execute(
                select(
                    Delivery.destination, Delivery.state, func.count(), func.sum(Delivery.attempts)
                ).group_by(Delivery.destination, Delivery.state)
            ).all()
            heartbeats = session.scalars(select(WorkerHeartbeat.last_seen_at)).all()

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

        latency = HistogramMetricFamily(
            "triage_job_latency_seconds",
            "From a series being complete to its result: queueing plus inference.",
        )
        latency.add_metric([], *_histogram(latency_pairs))

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
        workers.add_metric(
            [], sum(1 for seen in heartbeats if _age(now, seen) <= self._worker_alive_seconds)
        )
        return [received, depth, jobs, oldest, latency, failures, deliveries, workers]


def _age(now: datetime, then: datetime | None) -> float:
    return 0.0 if then is None else max((now - then).total_seconds(), 0.0)


def _histogram(
    pairs: Iterable[tuple[datetime, datetime | None]],
) -> tuple[list[tuple[str, float]], float]:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    total = 0.0
    for created_at, completed_at in pairs:
        if completed_at is None:
            continue
        seconds = (created_at - completed_at).total_seconds()
        if seconds < 0:
            # An older result of a series that was reopened and completed again since:
            # measured against the new completion time it means nothing.
            continue
        total += seconds
        index = next(
            (i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound), len(LATENCY_BUCKETS)
        )
        counts[index] += 1
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return buckets, total


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
