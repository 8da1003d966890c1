"""Group commit for the receiver: many associations, one database transaction per batch.

Each C-STORE handler hands its row to :class:`InstanceRecorder` and waits until the row
is committed; only then does it answer Success. Under load, rows that arrive while a
commit is running are written together in the next one, so the cost of a commit is
shared instead of paid per instance.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from triage.logs import describe_db_error, get_logger
from triage.receive.header import ReceivedInstance
from triage.receive.ingest import record_instances

log = get_logger(__name__)

_STOP = object()


class InstanceRecorder:
    """A background thread that commits instance rows in batches."""

    def __init__(self, sessions: sessionmaker[Session], max_batch: int = 128) -> None:
        self._sessions = sessions
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="instance-recorder", daemon=True)
        self._thread.start()

    def record(self, item: ReceivedInstance, timeout: float = 60.0) -> None:
        """Commit ``item``'s rows; returns once they are committed, raises if they cannot be."""
        done: Future[None] = Future()
        self._queue.put((item, done))
        done.result(timeout)

    def close(self) -> None:
        """Finish the rows already handed over, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join()

    def _commit(self, items: list[ReceivedInstance]) -> None:
        with self._sessions() as session:
            record_instances(session, items)
            session.commit()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            items = [b[0] for b in batch]  # type: ignore[index]
            futures: list[Future[None]] = [b[1] for b in batch]  # type: ignore[index]
            try:
                try:
                    self._commit(items)
                except IntegrityError:
                    # Another process inserted the same study or series between our
                    # lookup and insert; a second pass finds its rows.
                    self._commit(items)
            except Exception as err:  # handed to each waiting handler, which answers 0xA700
                # By class and statement kind: the message repeats the bound
                # parameters, the patient ID among them.
                log.error(
                    "instance_rows_not_committed", count=len(items), error=describe_db_error(err)
                )
                for fut in futures:
                    fut.set_exception(err)
            else:
                for fut in futures:
                    fut.set_result(None)
            if stop:
                return
