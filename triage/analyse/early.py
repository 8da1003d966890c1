"""Preprocess a series while it waits out ``series.stable_seconds``, not after.

A series is complete only after ``stable_seconds`` of quiet (30 s by default), and then
its job reads, decodes and preprocesses every slice before the CNN can start: on a GPU
host, the longest stage of a study. So an idle worker preprocesses a series once it has
been quiet for half of ``stable_seconds`` and passes the selection rules, and keeps the
model input, keyed by the files it was made from (spool path, size and modification
time of each, in the job's order). When the series' job comes, the worker takes that
input if the series still has exactly those files; an instance that arrived or was
replaced since makes the keys differ, and the job preprocesses the files as it would
have anyway. Preparing early can cost work, never a wrong input.

With several workers, worker ``i`` of ``n`` prepares the series whose id is ``i`` mod
``n`` (so no two prepare the same one) and claims its own prepared jobs first; another
idle worker may still take such a job, and then preprocesses the files itself. Hosts
that share one PostgreSQL queue (``triage worker`` on each) do not share out the series:
each host's workers prepare their share of every series, and only the host whose worker
claims the job gains from it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage.analyse.decide import PreparingPredictor
from triage.analyse.selection import skip_reason
from triage.config import Config
from triage.db.models import Instance, Job, JobState, Series, SeriesState, utcnow
from triage.logs import describe_error, get_logger

log = get_logger(__name__)

# Prepared series held at once: each is a model input (172 MB for InceptionResNetV2 at
# 386 px), and the jobs take them in the order their series turned quiet.
HELD = 2

FileKey = tuple[tuple[str, int, int], ...]


def series_files(session: Session, spool_dir: Path, series_id: int) -> list[Path]:
    """The series' spooled files that are on disk, in Instance Number order."""
    return [
        spool_dir / path
        for path in session.scalars(
            select(Instance.file_path)
            .where(Instance.series_id == series_id, Instance.missing.is_(False))
            .order_by(Instance.instance_number, Instance.id)
        )
    ]


def file_key(files: Iterable[Path]) -> FileKey:
    """What identifies the content of ``files``: each one's path, size and mtime.

    Raises
    ------
    FileNotFoundError
        A file is gone (retention, or an operator cleaning the spool).
    """
    key = []
    for path in files:
        stat = os.stat(path)
        key.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(key)


@dataclass
class _Prepared:
    key: FileKey
    last_received_at: datetime
    series: Any  # model.preprocess.PreprocessedSeries


class EarlyPreprocessor:
    """A worker's series preprocessed before their jobs (see the module doc).

    Parameters
    ----------
    config : Config
        ``series`` gives ``stable_seconds`` and the selection rules, ``spool_dir`` the
        files.
    sessions : sessionmaker
        The worker's session factory.
    predictor : PreparingPredictor
        Its ``preprocess`` makes the model input (on the predictor's threads).
    worker_index, workers : int
        This worker's number from 0, and how many workers share the series.
    """

    def __init__(
        self,
        config: Config,
        sessions: sessionmaker[Session],
        predictor: PreparingPredictor,
        worker_index: int = 0,
        workers: int = 1,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.predictor = predictor
        self.worker_index = worker_index
        self.workers = max(workers, 1)
        self._held: dict[int, _Prepared] = {}
        # Series tried at their last_received_at, prepared or not (a series the predictor
        # rejects is not read again each poll); a new instance changes the time.
        self._tried: dict[int, datetime] = {}

    @property
    def series_ids(self) -> list[int]:
        """The series whose model input is held, for the claim to prefer their jobs."""
        return list(self._held)

    def take(self, series_id: int, files: list[Path]) -> Any | None:
        """The held input of ``series_id`` if it was made from exactly ``files``, else None.

        Either way the input is no longer held: a job takes it once.
        """
        prepared = self._held.pop(series_id, None)
        if prepared is None:
            return None
        try:
            same = file_key(files) == prepared.key
        except FileNotFoundError:
            same = False
        return prepared.series if same else None

    def prepare_next(self) -> bool:
        """Preprocess the next quiet series of this worker's share; ``False`` when none is
        due (or the worker already holds :data:`HELD`)."""
        with self.sessions() as session:
            self._forget_settled(session)
            if len(self._held) >= HELD:
                return False
            due = self._next_due(session)
            if due is None:
                return False
            series, files = due
            study_uid = series.study.study_instance_uid
            series_uid = series.series_instance_uid
            series_id, last_received_at = series.id, series.last_received_at
        self._tried[series_id] = last_received_at
        bound = log.bind(study_instance_uid=study_uid, series_instance_uid=series_uid)
        started = time.perf_counter()
        try:
            key = file_key(files)
            prepared = self.predictor.preprocess(files)
        except Exception as err:
            # The job will meet the same problem and report it (an undetermined series,
            # or a failed attempt); here it only means nothing is prepared.
            bound.info("series_not_preprocessed_early", error=describe_error(err))
            return True
        self._held[series_id] = _Prepared(key, last_received_at, prepared)
        bound.info(
            "series_preprocessed_early",
            instances=len(files),
            seconds=round(time.perf_counter() - started, 3),
        )
        return True

    def _forget_settled(self, session: Session) -> None:
        """Drop what no job will take (a series skipped, reopened, gone, or its job taken
        by another worker), and the tries of series no longer receiving."""
        known = set(self._held) | set(self._tried)
        if not known:
            return
        rows = session.execute(
            select(Series.id, Series.state, Series.last_received_at, Job.state)
            .outerjoin(Job, Job.series_id == Series.id)
            .where(Series.id.in_(known))
        ).all()
        waiting = {
            series_id: last_received_at
            for series_id, state, last_received_at, job_state in rows
            if state in (SeriesState.RECEIVING, SeriesState.COMPLETE)
            or (state == SeriesState.QUEUED and job_state == JobState.QUEUED)
        }
        receiving = {series_id for series_id, state, *_ in rows if state == SeriesState.RECEIVING}
        for series_id in list(self._held):
            if waiting.get(series_id) != self._held[series_id].last_received_at:
                del self._held[series_id]
        for series_id in list(self._tried):
            if series_id not in receiving:
                del self._tried[series_id]

    def _next_due(self, session: Session) -> tuple[Series, list[Path]] | None:
        """The series quiet longest, of this worker's share, not yet tried as it stands,
        that would pass the selection rules; with its files."""
        cfg = self.config.series
        quiet_since = utcnow() - timedelta(seconds=cfg.stable_seconds / 2)
        candidates = session.scalars(
            select(Series)
            .where(Series.state == SeriesState.RECEIVING, Series.last_received_at <= quiet_since)
            .order_by(Series.last_received_at, Series.id)
        )
        for series in candidates:
            if series.id % self.workers != self.worker_index:
                continue
            if self._tried.get(series.id) == series.last_received_at:
                continue
            instances = session.scalars(
                select(Instance).where(Instance.series_id == series.id)
            ).all()
            if skip_reason(series, instances, cfg.selection) is not None:
                self._tried[series.id] = series.last_received_at
                continue
            return series, series_files(session, self.config.spool_dir, series.id)
        return None
