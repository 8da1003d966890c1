"""The completeness sweep: a series is complete after ``stable_seconds`` of quiet.

A complete series then passes the selection rules and gets a queued job, or is skipped
with its reason. Run periodically by the scheduler.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from triage.config import SeriesConfig
from triage.db.models import Instance, Job, JobState, Series, SeriesState, utcnow
from triage.logs import get_logger
from triage.selection import skip_reason

log = get_logger(__name__)


def sweep_series(
    sessions: sessionmaker[Session], cfg: SeriesConfig, now: datetime | None = None
) -> int:
    """Complete every quiet series, then queue or skip it. Returns how many were completed."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=cfg.stable_seconds)
    with sessions() as session:
        quiet = session.scalars(
            select(Series)
            .where(Series.state == SeriesState.RECEIVING, Series.last_received_at <= cutoff)
            .order_by(Series.last_received_at)
            # Several daemons on one PostgreSQL each take different series; SQLite ignores it.
            .with_for_update(skip_locked=True)
        ).all()
        for series in quiet:
            series.state = SeriesState.COMPLETE
            series.completed_at = now
            instances = session.scalars(
                select(Instance).where(Instance.series_id == series.id)
            ).all()
            reason = skip_reason(series, instances, cfg.selection)
            bound = log.bind(
                study_instance_uid=series.study.study_instance_uid,
                series_instance_uid=series.series_instance_uid,
            )
            if reason is not None:
                series.state = SeriesState.SKIPPED
                series.skip_reason = reason
                bound.info("series_skipped", reason=reason, instances=len(instances))
                continue
            series.state = SeriesState.QUEUED
            job = series.job
            if job is None:
                job = Job(series=series, state=JobState.QUEUED, attempts=0)
                session.add(job)
                session.flush()
                bound.info("job_queued", job_id=job.id, instances=len(instances))
            else:
                # Reopened by late instances: analyse the whole series again.
                job.state = JobState.QUEUED
                job.reason = None
                job.error = None
                job.attempts = 0
                job.worker_id = None
                job.lease_expires_at = None
                bound.info("job_requeued", job_id=job.id, instances=len(instances))
        session.commit()
        return len(quiet)


def next_series_due(sessions: sessionmaker[Session], cfg: SeriesConfig) -> datetime | None:
    """When the first of the series still receiving will have been quiet for
    ``stable_seconds`` (naive UTC); None when no series is receiving."""
    with sessions() as session:
        last = session.scalar(
            select(func.min(Series.last_received_at)).where(Series.state == SeriesState.RECEIVING)
        )
    return None if last is None else last + timedelta(seconds=cfg.stable_seconds)
