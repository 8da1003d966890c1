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

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from sqlalchemy.orm import Session, sessionmaker

from triage.analyse.completeness import next_series_due, sweep_series
from triage.config import Config
from triage.dispatch import Dispatcher
from triage.logs import get_logger
from triage.states.job import requeue_expired_leases
from triage.storage.retention import sweep_retention

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


def _run_sweep(name: str, sweep: Callable[[], object]) -> None:
    """Run one periodic sweep; a failure is logged and never fatal. The rows keep their
    state, so the next tick picks up what this one did not do."""
    try:
        sweep()
    except Exception as err:
        log.error(f"{name}_sweep_failed", error=str(err))


class SweepScheduler(BackgroundScheduler):
    """A background scheduler whose ``shutdown(wait=True)`` cannot deadlock on a sweep.

    APScheduler 3 waits for the running jobs while it holds its job-store lock, and the
    completeness sweep takes that lock to bring its own next run forward: a stop request
    that arrived mid-sweep hung the daemon. This one stops the scheduler without waiting
    (releasing the lock) and then waits for the sweeps on its executor.
    """

    def __init__(self) -> None:
        self._sweeps = ThreadPoolExecutor()
        super().__init__(timezone="UTC", executors={"default": self._sweeps})

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait=False)
        if wait:
            self._sweeps.shutdown(wait=True)


def build_scheduler(
    sessions: sessionmaker[Session],
    config: Config,
    on_jobs_queued: Callable[[], None] | None = None,
    dispatcher: Dispatcher | None = None,
) -> SweepScheduler:
    """A scheduler with the sweeps registered; the caller starts and stops it.

    ``on_jobs_queued`` is called after a completeness sweep that completed series (the
    daemon wakes its workers with it). The dispatch sweep hands due deliveries to
    ``dispatcher`` (a new one by default), whose threads send them; the caller closes it.
    """
    dispatcher = dispatcher or Dispatcher(sessions, config)
    scheduler = SweepScheduler()

    def every(seconds: float, job_id: str, run: Callable[..., None], *args: object) -> None:
        # Never two runs of one sweep at once, and ticks missed meanwhile collapse into one.
        scheduler.add_job(
            run, "interval", seconds=seconds, args=args, id=job_id, max_instances=1, coalesce=True
        )

    every(
        config.series.sweep_interval_seconds,
        "completeness",
        _run_completeness,
        sessions,
        config,
        scheduler,
        on_jobs_queued,
    )
    every(
        LEASE_SWEEP_SECONDS,
        "lease_expiry",
        _run_sweep,
        "lease",
        lambda: requeue_expired_leases(sessions, config.worker.max_attempts),
    )
    every(
        config.dispatch.sweep_interval_seconds,
        "dispatch",
        _run_sweep,
        "dispatch",
        dispatcher.sweep,
    )
    every(
        config.retention.sweep_interval_seconds,
        "retention",
        _run_sweep,
        "retention",
        lambda: sweep_retention(sessions, config),
    )
    return scheduler


def run_now(scheduler: BaseScheduler, job_id: str) -> None:
    """Run a sweep now rather than at its next tick (a no-op for an unknown job)."""
    job = scheduler.get_job(job_id)
    if job is not None:
        job.modify(next_run_time=datetime.now(UTC))
