"""The series state machine: ``receiving → complete → queued | skipped(reason)``.

A series is ``receiving`` from its first instance (the column's default). It is
complete once it has been quiet for ``series.stable_seconds`` (see
:mod:`triage.analyse.completeness`), then queued for analysis or skipped with its reason. A new
instance reopens it, from any state, and the cycle starts over.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from triage.db.models import Series, SeriesState
from triage.states import changed


def reopen(session: Session, series_id: int) -> bool:
    """``complete | queued | skipped → receiving``: a new instance arrived.

    Its completion time and skip reason no longer hold. ``False`` when it was still
    receiving.
    """
    return changed(
        session.execute(
            update(Series)
            .where(Series.id == series_id, Series.state != SeriesState.RECEIVING)
            .values(state=SeriesState.RECEIVING, skip_reason=None, completed_at=None)
            .execution_options(synchronize_session=False)
        )
    )


def complete(session: Session, series_id: int, quiet_since: datetime, now: datetime) -> bool:
    """``receiving → complete``, if nothing arrived after ``quiet_since``."""
    return changed(
        session.execute(
            update(Series)
            .where(
                Series.id == series_id,
                Series.state == SeriesState.RECEIVING,
                Series.last_received_at <= quiet_since,
            )
            .values(state=SeriesState.COMPLETE, completed_at=now)
            .execution_options(synchronize_session=False)
        )
    )


def skip(session: Session, series_id: int, reason: str) -> bool:
    """``complete → skipped``: the selection rules turned it down, for ``reason``."""
    return changed(
        session.execute(
            update(Series)
            .where(Series.id == series_id, Series.state == SeriesState.COMPLETE)
            .values(state=SeriesState.SKIPPED, skip_reason=reason)
            .execution_options(synchronize_session=False)
        )
    )


def queue(session: Session, series_id: int) -> bool:
    """``complete → queued``: it passed the selection rules; its job is queued with it."""
    return changed(
        session.execute(
            update(Series)
            .where(Series.id == series_id, Series.state == SeriesState.COMPLETE)
            .values(state=SeriesState.QUEUED)
            .execution_options(synchronize_session=False)
        )
    )
