"""Retention: delete the daemon's copies of images and reports once they have served.

The PACS keeps the originals and the reports; the spool holds images to be analysed and
the outbox holds reports to be delivered. Without this sweep the spool grows until
``receiver.min_free_disk_mb`` makes the receiver refuse every study.

Rows stay: the worklist, ``triage status`` and the audit trail need them. A deleted image
is marked ``missing``, as start-up reconciliation would mark it; if the PACS sends it
again, it is received as usual and counts again.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from triage.config import Config
from triage.db.models import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    utcnow,
)
from triage.logs import get_logger
from triage.storage.outbox import outbox_dir
from triage.storage.outbox import recover as recover_outbox

log = get_logger(__name__)

_FINISHED_JOBS = (JobState.DONE, JobState.UNDETERMINED, JobState.FAILED)


@dataclass
class RetentionReport:
    """What one sweep deleted."""

    series: int = 0
    instances: int = 0
    bytes: int = 0
    outboxes: int = 0


def sweep_retention(
    sessions: sessionmaker[Session], config: Config, now: datetime | None = None
) -> RetentionReport:
    """Delete spooled images and outbox reports older than ``config.retention`` allows.

    Parameters
    ----------
    sessions : sessionmaker
        The process's session factory.
    config : Config
        ``retention``, ``data_dir`` and the spool folder.
    now : datetime, optional
        Naive UTC time taken as the present; the current time by default.

    Returns
    -------
    RetentionReport
        Counts of what was deleted.
    """
    now = now or utcnow()
    cfg = config.retention
    report = RetentionReport()
    # What a crash between a worker's write and its commit (or rename) left: settled
    # here too, as a worker on another host may crash while this daemon runs.
    recover_outbox(sessions, config.data_dir, config.worker.lease_seconds)
    if cfg.spool_days is not None:
        _expire_spool(sessions, config.spool_dir, now - timedelta(days=cfg.spool_days), report)
    if cfg.outbox_days is not None:
        _expire_outboxes(sessions, config.data_dir, now - timedelta(days=cfg.outbox_days), report)
    if report.series or report.outboxes:
        log.info(
            "retention_swept",
            series=report.series,
            instances=report.instances,
            megabytes=round(report.bytes / 1e6, 1),
            outboxes=report.outboxes,
        )
    return report


def _expire_spool(
    sessions: sessionmaker[Session], spool: Path, cutoff: datetime, report: RetentionReport
) -> None:
    # Done with: skipped, or its job ended. A queued or running job still needs the files,
    # and a series that is receiving again is not quiet.
    finished = or_(
        Series.state == SeriesState.SKIPPED,
        exists().where(Job.series_id == Series.id, Job.state.in_(_FINISHED_JOBS)),
    )
    stale = (
        Instance.missing.is_(False),
        # Also per instance: one that arrived since the series was listed is kept.
        Instance.received_at < cutoff,
    )
    with sessions() as session:
        candidates = session.scalars(
            select(Series.id).where(
                Series.last_received_at < cutoff,
                Series.state != SeriesState.RECEIVING,
                finished,
                exists().where(Instance.series_id == Series.id, *stale),
            )
        ).all()
    for series_id in candidates:
        with sessions() as session:
            rows = session.execute(
                select(Instance.file_path, Instance.file_size).where(
                    Instance.series_id == series_id, *stale
                )
            ).all()
            # Then a write: on SQLite it takes the write lock (on PostgreSQL the row
            # lock below), so the series cannot be reopened between the check and the
            # commit. A crash after the files went and before the commit leaves rows
            # that start-up reconciliation marks missing.
            session.execute(
                update(Instance)
                .where(Instance.series_id == series_id, *stale)
                .values(missing=True)
                .execution_options(synchronize_session=False)
            )
            series = session.scalars(
                select(Series)
                .where(Series.id == series_id, Series.state != SeriesState.RECEIVING, finished)
                .with_for_update()
            ).first()
            if series is None:  # reopened since it was listed: its files stay
                session.rollback()
                continue
            series_uid = series.series_instance_uid
            series.spool_released_at = utcnow()
            folders = set()
            for row in rows:
                path = spool / row.file_path
                path.unlink(missing_ok=True)
                folders.add(path.parent)
                report.bytes += row.file_size
            session.commit()
            report.series += 1
            report.instances += len(rows)
            log.info(
                "spool_series_released",
                series_instance_uid=series_uid,
                instances=len(rows),
            )
        for folder in folders:
            _remove_empty(folder, spool)


def _remove_empty(folder: Path, spool: Path) -> None:
    """Remove ``folder`` and then its parents up to ``spool``, while they are empty."""
    while folder != spool and spool in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (another series of the study), or already gone
            return
        folder = folder.parent


def _expire_outboxes(
    sessions: sessionmaker[Session], data_dir: Path, cutoff: datetime, report: RetentionReport
) -> None:
    # A delivery that is not sent (pending, retrying, or dead and waiting for
    # `triage retry`) still needs its files.
    unsent = exists().where(Delivery.result_id == Result.id, Delivery.state != DeliveryState.SENT)
    with sessions() as session:
        ids = session.scalars(select(Result.id).where(Result.created_at < cutoff, ~unsent)).all()
    for result_id in ids:
        folder = outbox_dir(data_dir, result_id)
        if folder.is_dir():
            shutil.rmtree(folder)
            report.outboxes += 1
