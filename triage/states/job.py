"""The job state machine: ``queued → running → done | undetermined | failed``.

Every transition is one conditional statement, so two workers (threads, processes or
hosts on one PostgreSQL) never both hold a job:

- SQLite serialises writers, so ``UPDATE ... WHERE id = (SELECT ... LIMIT 1) AND
  state = 'queued'`` claims atomically.
- PostgreSQL adds ``FOR UPDATE SKIP LOCKED`` to that sub-select, so concurrent workers
  skip each other's candidate row instead of queueing behind it.

A claim is identified by ``(job id, worker id, attempts)``: a job that was taken away
from a worker (its lease expired, or its series was reopened and requeued) no longer
matches, and whatever that worker still does with it changes nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from triage.db.models import Job, JobState, Series, SeriesState, utcnow
from triage.logs import get_logger
from triage.states import changed

log = get_logger(__name__)


def worker_id_for(pid: int | None = None, hostname: str | None = None) -> str:
    """The id a worker process goes by: ``<hostname>:<pid>``.

    The parent can compute it from a child's pid, and so give back the jobs of a child
    that died without waiting for their leases to run out.
    """
    return f"{hostname or socket.gethostname()}:{pid if pid is not None else os.getpid()}"


@dataclass(frozen=True)
class Claim:
    """A job this worker holds: the job's id and the attempt that the claim counted."""

    job_id: int
    attempts: int
    worker_id: str


def held(claim: Claim) -> ColumnElement[bool]:
    """A WHERE condition true only while the job is still this claim's."""
    return and_(
        Job.id == claim.job_id,
        Job.state == JobState.RUNNING,
        Job.worker_id == claim.worker_id,
        Job.attempts == claim.attempts,
    )


def claim_job(
    sessions: sessionmaker[Session],
    worker_id: str,
    lease_seconds: float,
    now: datetime | None = None,
    prefer_series: Collection[int] = (),
) -> Claim | None:
    """Take the oldest queued job whose series is queued, or return ``None``.

    The jobs of ``prefer_series`` come first: this worker already holds their model
    input (:mod:`triage.analyse.early`).

    The job becomes ``running``, its attempts grow by one, and it is leased to
    ``worker_id`` for ``lease_seconds``. A job whose series was reopened (its state is
    ``receiving`` again) is left alone until the completeness sweep requeues it.

    Parameters
    ----------
    sessions : sessionmaker
        This process's session factory.
    worker_id : str
        Who claims, as :func:`worker_id_for` gives it.
    lease_seconds : float
        How long the claim holds without a heartbeat.
    now : datetime, optional
        Naive UTC now (for tests).
    prefer_series : collection of int
        Series ids whose jobs to take before older ones.

    Returns
    -------
    Claim or None
        The claim, or ``None`` when no job is waiting.
    """
    now = now or utcnow()
    order: list[Any] = [Job.created_at, Job.id]
    if prefer_series:
        order.insert(0, case((Job.series_id.in_(list(prefer_series)), 0), else_=1))
    candidate = (
        select(Job.id)
        .join(Series, Series.id == Job.series_id)
        .where(Job.state == JobState.QUEUED, Series.state == SeriesState.QUEUED)
        .order_by(*order)
        .limit(1)
        # PostgreSQL: lock only the job row, and skip rows another worker is claiming.
        # SQLite compiles no FOR UPDATE; its single writer makes the UPDATE atomic.
        .with_for_update(skip_locked=True, of=Job)
        .scalar_subquery()
    )
    statement = (
        update(Job)
        .where(Job.id == candidate, Job.state == JobState.QUEUED)
        .values(
            state=JobState.RUNNING,
            attempts=Job.attempts + 1,
            worker_id=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            updated_at=now,
        )
        .returning(Job.id, Job.attempts)
        .execution_options(synchronize_session=False)
    )
    with sessions() as session:
        row = session.execute(statement).first()
        session.commit()
    if row is None:
        return None
    return Claim(job_id=int(row[0]), attempts=int(row[1]), worker_id=worker_id)


def renew_lease(
    sessions: sessionmaker[Session], claim: Claim, lease_seconds: float, now: datetime | None = None
) -> bool:
    """Push the claim's lease ``lease_seconds`` into the future; ``False`` if it was lost."""
    now = now or utcnow()
    with sessions() as session:
        result = session.execute(
            update(Job)
            .where(held(claim))
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        )
        session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release_claim(
    sessions: sessionmaker[Session],
    claim: Claim,
    *,
    error: str | None = None,
    max_attempts: int | None = None,
    count_attempt: bool = True,
) -> JobState | None:
    """Give a claimed job back: ``queued`` again, or ``failed`` once attempts run out.

    Parameters
    ----------
    sessions : sessionmaker
        This process's session factory.
    claim : Claim
        The claim to give up.
    error : str, optional
        Why the attempt failed; kept on the job for ``triage status``.
    max_attempts : int, optional
        With an error, a job that has had this many attempts is marked ``failed``.
    count_attempt : bool
        ``False`` when the worker merely stops (a shutdown is not the job's fault), so
        the attempt the claim counted is taken back.

    Returns
    -------
    JobState or None
        The job's new state, or ``None`` if the claim had already been lost.
    """
    attempts = claim.attempts if count_attempt else claim.attempts - 1
    failed = max_attempts is not None and attempts >= max_attempts
    state = JobState.FAILED if failed else JobState.QUEUED
    with sessions() as session:
        result = session.execute(
            update(Job)
            .where(held(claim))
            .values(
                state=state,
                attempts=attempts,
                error=error,
                worker_id=None,
                lease_expires_at=None,
            )
            .execution_options(synchronize_session=False)
        )
        session.commit()
    return state if result.rowcount else None  # type: ignore[attr-defined]


def _requeue(
    session: Session, condition: ColumnElement[bool], max_attempts: int, error: str
) -> list[tuple[int, JobState]]:
    """Fail the matching running jobs that ran out of attempts and requeue the rest."""
    changed: list[tuple[int, JobState]] = []
    for state, attempts_cond in (
        (JobState.FAILED, Job.attempts >= max_attempts),
        (JobState.QUEUED, Job.attempts < max_attempts),
    ):
        rows = session.execute(
            update(Job)
            .where(Job.state == JobState.RUNNING, condition, attempts_cond)
            .values(state=state, error=error, worker_id=None, lease_expires_at=None)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        ).all()
        changed.extend((int(r[0]), state) for r in rows)
    return changed


def requeue_expired_leases(
    sessions: sessionmaker[Session], max_attempts: int = 3, now: datetime | None = None
) -> int:
    """Return running jobs whose lease ran out to the queue; run by the scheduler.

    A worker that died (killed, out of memory, its host gone) stops renewing its
    lease. Its job goes back to ``queued``, or to ``failed`` when it has already had
    ``max_attempts`` attempts: a series that kills every worker that touches it must
    not kill them forever.

    Returns
    -------
    int
        How many jobs were requeued or failed.
    """
    now = now or utcnow()
    with sessions() as session:
        changed = _requeue(
            session,
            Job.lease_expires_at < now,
            max_attempts,
            "the worker's lease expired: it stopped or died while analysing this series",
        )
        session.commit()
    for job_id, state in changed:
        log.warning("job_lease_expired", job_id=job_id, new_state=state.value)
    return len(changed)


def release_worker_jobs(
    sessions: sessionmaker[Session],
    worker_id: str,
    max_attempts: int,
    *,
    count_attempt: bool = True,
) -> int:
    """Requeue (or fail) the running jobs of a worker known to be gone, without waiting
    for their leases.

    The attempt counts when the worker died on its own, since the job may be what
    killed it; it does not when we stopped the worker ourselves (``count_attempt``
    false: a shutdown that ran out of patience).
    """
    with sessions() as session:
        if count_attempt:
            changed = _requeue(
                session,
                Job.worker_id == worker_id,
                max_attempts,
                f"worker {worker_id} died while analysing this series",
            )
        else:
            rows = session.execute(
                update(Job)
                .where(Job.state == JobState.RUNNING, Job.worker_id == worker_id)
                .values(
                    state=JobState.QUEUED,
                    attempts=Job.attempts - 1,
                    worker_id=None,
                    lease_expires_at=None,
                )
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            ).all()
            changed = [(int(r[0]), JobState.QUEUED) for r in rows]
        session.commit()
    for job_id, state in changed:
        log.warning("job_released", job_id=job_id, worker_id=worker_id, new_state=state.value)
    return len(changed)


def enqueue(session: Session, series_id: int) -> int:
    """Queue the first analysis of a series: a new job in ``queued``; returns its id."""
    return int(
        session.execute(
            insert(Job)
            .values(series_id=series_id, state=JobState.QUEUED, attempts=0)
            .returning(Job.id)
        ).scalar_one()
    )


def requeue_for_series(session: Session, job_id: int) -> bool:
    """Queue a job again, from any state, because its series was reopened and completed
    again: the whole series is analysed afresh, with its attempts reset.

    A worker still analysing the old content loses its claim (its attempts no longer
    match), so its result is discarded.
    """
    return changed(
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                state=JobState.QUEUED,
                reason=None,
                error=None,
                attempts=0,
                worker_id=None,
                lease_expires_at=None,
            )
            .execution_options(synchronize_session=False)
        )
    )


def confirm_held(session: Session, claim: Claim) -> bool:
    """Touch the claimed job inside ``session``'s transaction; ``False`` if it was lost.

    A write, not a read: on SQLite it takes the database's write lock, so nothing read
    after it in the same transaction can change before the commit.
    """
    return changed(
        session.execute(
            update(Job)
            .where(held(claim))
            .values(updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    )


def return_unanalysed(session: Session, claim: Claim) -> bool:
    """``running → queued`` without counting the attempt: the series changed under the
    worker (new instances), so the completeness sweep will requeue it in full."""
    return changed(
        session.execute(
            update(Job)
            .where(held(claim))
            .values(
                state=JobState.QUEUED,
                attempts=claim.attempts - 1,
                worker_id=None,
                lease_expires_at=None,
            )
            .execution_options(synchronize_session=False)
        )
    )


def finish_done(session: Session, claim: Claim) -> bool:
    """``running → done``, inside the transaction that stores the result; ``False`` if
    the claim was lost."""
    return _finish(session, claim, JobState.DONE, None)


def finish_undetermined(session: Session, claim: Claim, reason: str | None) -> bool:
    """``running → undetermined(reason)``: the model could not decide, and retrying
    cannot help (a series too short, a file without pixels)."""
    return _finish(session, claim, JobState.UNDETERMINED, reason)


def _finish(session: Session, claim: Claim, state: JobState, reason: str | None) -> bool:
    return changed(
        session.execute(
            update(Job)
            .where(held(claim))
            .values(state=state, reason=reason, error=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
    )


def requeue_all_running(session: Session) -> int:
    """``running → queued`` for every job, at start-up: no worker of ours is alive yet,
    so whatever was running belongs to one that died with the previous process."""
    result = session.execute(
        update(Job)
        .where(Job.state == JobState.RUNNING)
        .values(state=JobState.QUEUED, worker_id=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
