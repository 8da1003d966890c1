"""The completeness sweep: a series is complete after ``stable_seconds`` of quiet.

A complete series then passes the selection rules and gets a queued job, or is skipped
with its reason. Run periodically by the scheduler. The transitions themselves are in
:mod:`triage.states.series` and :mod:`triage.states.job`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from triage.analyse.selection import skip_reason
from triage.config import SeriesConfig
from triage.db.models import Instance, Job, Series, SeriesState, utcnow
from triage.logs import get_logger
from triage.states import job as job_state
from triage.states import series as series_state

log = get_logger(__name__)


def sweep_series(
    sessions: sessionmaker[Session], cfg: SeriesConfig, now: datetime | None = None
) -> int:
    """Complete every quiet series, then queue or skip it. Returns how many were completed."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=cfg.stable_seconds)
    completed = 0
    with sessions() as session:
        quiet = session.scalars(
            select(Series)
            .where(Series.state == SeriesState.RECEIVING, Series.last_received_at <= cutoff)
            .order_by(Series.last_received_at)
            # Several daemons on one PostgreSQL each take different series; SQLite ignores it.
            .with_for_update(skip_locked=True)
        ).all()
        for series in quiet:
            if not series_state.complete(session, series.id, cutoff, now):
                continue
            completed += 1
            instances = session.scalars(
                select(Instance).where(Instance.series_id == series.id)
            ).all()
            reason = skip_reason(series, instances, cfg.selection)
            bound = log.bind(
                study_instance_uid=series.study.study_instance_uid,
                series_instance_uid=series.series_instance_uid,
            )
            if reason is not None:
                series_state.skip(session, series.id, reason)
                bound.info("series_skipped", reason=reason, instances=len(instances))
                continue
            series_state.queue(session, series.id)
            job_id = session.scalar(select(Job.id).where(Job.series_id == series.id))
            if job_id is None:
                job_id = job_state.enqueue(session, series.id)
                bound.info("job_queued", job_id=job_id, instances=len(instances))
            else:
                # Reopened by late instances: analyse the whole series again.
                job_state.requeue_for_series(session, job_id)
                bound.info("job_requeued", job_id=job_id, instances=len(instances))
        session.commit()
        return completed


def next_series_due(sessions: sessionmaker[Session], cfg: SeriesConfig) -> datetime | None:
    """When the first of the series still receiving will have been quiet for
    ``stable_seconds`` (naive UTC); None when no series is receiving."""
    with sessions() as session:
        last = session.scalar(
            select(func.min(Series.last_received_at)).where(Series.state == SeriesState.RECEIVING)
        )
    return None if last is None else last + timedelta(seconds=cfg.stable_seconds)
