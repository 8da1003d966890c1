"""A worker's hold on its job while it analyses: the lease, renewed by a heartbeat.

:class:`Heartbeat` is a thread that, every ``worker.heartbeat_seconds``, refreshes this
worker's :class:`WorkerHeartbeat` row (what ``/healthz`` counts) and renews the lease of
the claim the worker holds (see :func:`triage.states.job.renew_lease`). A worker that
stops beating loses its job to the lease-expiry sweep.
"""

from __future__ import annotations

import os
import socket
import threading
from datetime import datetime

from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from triage.config import WorkerConfig
from triage.db.models import WorkerHeartbeat, utcnow
from triage.logs import get_logger
from triage.states.job import Claim, renew_lease

log = get_logger(__name__)


class Heartbeat:
    """Keeps one worker's heartbeat row fresh and the lease of its current claim alive.

    Parameters
    ----------
    sessions : sessionmaker
        This process's session factory.
    cfg : WorkerConfig
        ``heartbeat_seconds`` and ``lease_seconds``.
    worker_id : str
        The worker's id, as :func:`triage.states.job.worker_id_for` gives it.
    device, backend : str
        What the model runs on, for ``/healthz``.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        cfg: WorkerConfig,
        worker_id: str,
        device: str | None,
        backend: str | None,
    ) -> None:
        self.sessions = sessions
        self.cfg = cfg
        self.worker_id = worker_id
        self.device = device
        self.backend = backend
        self._claim: Claim | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, claim: Claim | None) -> None:
        """Renew ``claim``'s lease from now on (``None``: the worker holds nothing)."""
        with self._lock:
            self._claim = claim

    def start(self) -> None:
        """Beat now, then keep beating in a daemon thread."""
        self._beat()
        self._thread = threading.Thread(
            target=self._loop, name="triage-worker-heartbeat", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and remove this worker's heartbeat row."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            forget_worker(self.sessions, self.worker_id)
        except Exception as err:  # the row only ages out of /healthz then
            log.warning("worker_heartbeat_cleanup_failed", error=str(err))

    def _beat(self) -> None:
        beat(self.sessions, self.worker_id, self.device, backend=self.backend)

    def _loop(self) -> None:
        while not self._stop.wait(self.cfg.heartbeat_seconds):
            try:
                self._beat()
                with self._lock:
                    claim = self._claim
                if claim is not None and not renew_lease(
                    self.sessions, claim, self.cfg.lease_seconds
                ):
                    log.warning("job_lease_lost", job_id=claim.job_id, worker_id=self.worker_id)
            except Exception as err:  # the database may be briefly away; beat again next time
                log.warning("worker_heartbeat_failed", error=str(err))


def beat(
    sessions: sessionmaker[Session],
    worker_id: str,
    device: str | None,
    now: datetime | None = None,
    backend: str | None = None,
) -> None:
    """Insert or refresh this worker's :class:`WorkerHeartbeat` row for ``/healthz``."""
    now = now or utcnow()
    hostname, _, pid = worker_id.rpartition(":")
    with sessions() as session:
        # Only this worker writes its row, so update-then-insert cannot race.
        result = session.execute(
            update(WorkerHeartbeat)
            .where(WorkerHeartbeat.worker_id == worker_id)
            .values(last_seen_at=now, device=device, backend=backend)
            .execution_options(synchronize_session=False)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            session.add(
                WorkerHeartbeat(
                    worker_id=worker_id,
                    hostname=hostname or socket.gethostname(),
                    pid=int(pid) if pid.isdigit() else os.getpid(),
                    device=device,
                    backend=backend,
                    started_at=now,
                    last_seen_at=now,
                )
            )
        session.commit()


def forget_worker(sessions: sessionmaker[Session], worker_id: str) -> None:
    """Remove a stopped worker's heartbeat row, so ``/healthz`` stops counting it."""
    with sessions() as session:
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == worker_id))
        session.commit()
