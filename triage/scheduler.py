"""APScheduler set-up for the daemon's periodic sweeps (completeness now; dispatch and
retention join later)."""

from __future__ import annotations

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from triage.completeness import sweep_series
from triage.config import Config
from triage.logs import get_logger

log = get_logger(__name__)


def _run_completeness(sessions: sessionmaker[Session], config: Config) -> None:
    try:
        sweep_series(sessions, config.series)
    except Exception as err:  # a failed sweep is retried at the next tick, never fatal
        log.error("completeness_sweep_failed", error=str(err))


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
    return scheduler
