"""APScheduler set-up for the daemon's periodic sweeps: series completeness, expired job
leases, result deliveries, and retention of the spool and outbox.

The intervals bound the waits; the sweeps do not make a study wait for them. The
completeness sweep brings its next run forward to the moment the next series becomes
quiet, and wakes the workers when it queues jobs; :func:`run_now` lets the daemon send a
new result's deliveries at once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from sqlalchemy.orm import Session, sessionmaker

from triage.completeness import next_series_due, sweep_series
from triage.config import Config
from triage.dispatch import dispatch_due
from triage.jobs import requeue_expired_leases
from triage.logs import get_logger
from triage.retention import sweep_retention

log = get_logger(__name__)


# Past the moment a series turns quiet, so that the sweep's cutoff has passed it.
_DUE_MARGIN = timedelta(milliseconds=20)


def _run_completeness(
    sessions: sessionmaker[Session],
    config: Config,
    scheduler: BaseScheduler,
    on_jobs_queued: Callable[[], None] | None,
) -> None:
    try:
        if sweep_series(sessions, config.series) and on_jobs_queued is not None:
            on_jobs_queued()
        due = next_series_due(sessions, config.series)
    except Exception as err:  # a failed sweep is retried at the next tick, never fatal
        log.error("completeness_sweep_failed", error=str(err))
        return
    job = scheduler.get_job("completeness")
    if due is None or job is None or job.next_run_time is None:
        return
    due_at = max(due.replace(tzinfo=UTC) + _DUE_MARGIN, datetime.now(UTC))
    if due_at < job.next_run_time:
        job.modify(next_run_time=due_at)


# Leases are minutes long; a few seconds of lateness in noticing a dead worker is nothing.
LEASE_SWEEP_SECONDS = 5.0


def _run_lease_sweep(sessions: sessionmaker[Session], config: Config) -> None:
    try:
        requeue_expired_leases(sessions, config.worker.max_attempts)
    except Exception as err:  # retried at the next tick, never fatal
        log.error("lease_sweep_failed", error=str(err))


def _run_retention(sessions: sessionmaker[Session], config: Config) -> None:
    try:
        sweep_retention(sessions, config)
    except Exception as err:  # what was not deleted now is deleted at the next tick
        log.error("retention_sweep_failed", error=str(err))


def _run_dispatch(sessions: sessionmaker[Session], config: Config) -> None:
    try:
        dispatch_due(sessions, config)
    except Exception as err:  # the rows keep their state; the next tick tries again
        log.error("dispatch_sweep_failed", error=str(err))


def build_scheduler(
    sessions: sessionmaker[Session],
    config: Config,
    on_jobs_queued: Callable[[], None] | None = None,
) -> BackgroundScheduler:
    """A scheduler with the sweeps registered; the caller starts and stops it.

    ``on_jobs_queued`` is called after a completeness sweep that completed series (the
    daemon wakes its workers with it).
    """
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(
        _run_completeness,
        "interval",
        seconds=config.series.sweep_interval_seconds,
        args=[sessions, config, scheduler, on_jobs_queued],
        id="completeness",
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(
        _run_lease_sweep,
        "interval",
        seconds=LEASE_SWEEP_SECONDS,
        args=[sessions, config],
        id="lease_expiry",
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(
        _run_dispatch,
        "interval",
        seconds=config.dispatch.sweep_interval_seconds,
        args=[sessions, config],
        id="dispatch",
        # Sending is serial and may block on a slow peer; never two sweeps at once.
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(
        _run_retention,
        "interval",
        seconds=config.retention.sweep_interval_seconds,
        args=[sessions, config],
        id="retention",
        max_instances=1,
        coalesce=True,
    )
    return scheduler


def run_now(scheduler: BaseScheduler, job_id: str) -> None:
    """Run a sweep now rather than at its next tick (a no-op for an unknown job)."""
    job = scheduler.get_job(job_id)
    if job is not None:
        job.modify(next_run_time=datetime.now(UTC))
