"""APScheduler set-up for the daemon's periodic sweeps: series completeness, expired job
leases, and result deliveries."""

from __future__ import annotations

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from triage.completeness import sweep_series
from triage.config import Config
from triage.dispatch import dispatch_due
from triage.jobs import requeue_expired_leases
from triage.logs import get_logger

log = get_logger(__name__)


def _run_completeness(sessions: sessionmaker[Session], config: Config) -> None:
    try:
        sweep_series(sessions, config.series)
    except Exception as err:  # a failed sweep is retried at the next tick, never fatal
        log.error("completeness_sweep_failed", error=str(err))


# Leases are minutes long; a few seconds of lateness in noticing a dead worker is nothing.
LEASE_SWEEP_SECONDS = 5.0


def _run_lease_sweep(sessions: sessionmaker[Session], config: Config) -> None:
    try:
        requeue_expired_leases(sessions, config.worker.max_attempts)
    except Exception as err:  # retried at the next tick, never fatal
        log.error("lease_sweep_failed", error=str(err))


def _run_dispatch(sessions: sessionmaker[Session], config: Config) -> None:
    try:
        dispatch_due(sessions, config)
    except Exception as err:  # the rows keep their state; the next tick tries again
        log.error("dispatch_sweep_failed", error=str(err))


def build_scheduler(sessions: sessionmaker[Session], config: Config) -> BackgroundScheduler:
    """A scheduler with the sweeps registered; the caller starts and stops it."""
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(
        _run_completeness,
        "interval",
        seconds=config.series.sweep_interval_seconds,
        args=[sessions, config],
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
    return scheduler
