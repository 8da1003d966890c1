"""``/healthz``: can the daemon do its job right now?

It answers 503, so that a load balancer or monitor raises an alarm, when

- the database does not answer: nothing can be received, queued or shown;
- an inference worker that ``triage serve`` started is down: dead and waiting for its
  restart, or restarted and not yet running steadily (status ``degraded``). A worker that
  crash-loops is reported from its first death, before any job has had to wait; or
- jobs are waiting, no worker has sent a heartbeat recently, and the oldest job has
  waited longer than a heartbeat window: studies are piling up unread by the model.
  The wait lets a worker that is still importing TensorFlow at start-up come up
  without the check flapping.

It answers 200 otherwise, including when no worker runs and nothing is queued (an idle
site, or workers that are being restarted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from triage.db.models import Job, JobState, WorkerHeartbeat, utcnow
from triage.logs import get_logger

if TYPE_CHECKING:
    from triage.supervisor import Supervision

log = get_logger(__name__)


@dataclass(frozen=True)
class Health:
    """The answer of ``/healthz``: its HTTP status and its JSON body."""

    status_code: int
    body: dict[str, Any]


def check_health(
    sessions: sessionmaker[Session],
    worker_alive_seconds: float,
    supervision: Supervision | None = None,
) -> Health:
    """Check the database, the worker processes, their heartbeats and the queue.

    Parameters
    ----------
    sessions : sessionmaker
        The process's session factory.
    worker_alive_seconds : float
        A worker whose last heartbeat is older than this is reported as not alive.
    supervision : Supervision, optional
        What this process's worker supervisor knows; None when it runs no workers.

    Returns
    -------
    Health
        200 or 503, with ``status`` (``ok``, ``degraded``, ``stalled`` or ``error``),
        ``database``, ``workers``, ``worker_processes`` (expected, up and restarts; None
        without a supervisor), ``queued_jobs`` and ``oldest_queued_job_age_seconds``
        (None when nothing is queued). The age counts from when the job last entered the
        queue, so a series reopened days later does not look days late.
    """
    processes = None if supervision is None else asdict(supervision)
    now = utcnow()
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
            beats = session.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.worker_id))
            workers: list[dict[str, Any]] = [
                {
                    "worker_id": b.worker_id,
                    "hostname": b.hostname,
                    "backend": b.backend,
                    "device": b.device,
                    "last_seen_seconds_ago": round(
                        max((now - b.last_seen_at).total_seconds(), 0.0), 1
                    ),
                }
                for b in beats
            ]
            queued, oldest = session.execute(
                select(func.count(), func.min(Job.updated_at)).where(Job.state == JobState.QUEUED)
            ).one()
    except SQLAlchemyError as err:
        log.warning("healthz_database_error", error=str(err).splitlines()[0])
        return Health(
            503,
            {
                "status": "error",
                "database": "error",
                "workers": [],
                "worker_processes": processes,
                "queued_jobs": None,
                "oldest_queued_job_age_seconds": None,
            },
        )
    for w in workers:
        w["alive"] = w["last_seen_seconds_ago"] <= worker_alive_seconds
    oldest_age = None if oldest is None else round(max((now - oldest).total_seconds(), 0.0), 1)
    stalled = (
        queued > 0
        and not any(w["alive"] for w in workers)
        and oldest_age is not None
        and oldest_age > worker_alive_seconds
    )
    degraded = supervision is not None and supervision.up < supervision.expected
    status = "degraded" if degraded else "stalled" if stalled else "ok"
    return Health(
        200 if status == "ok" else 503,
        {
            "status": status,
            "database": "ok",
            "workers": workers,
            "worker_processes": processes,
            "queued_jobs": queued,
            "oldest_queued_job_age_seconds": oldest_age,
        },
    )
