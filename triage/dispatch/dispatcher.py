"""Dispatching: claim due deliveries, send them, and record what happened.

A delivery goes ``pending → sent``, or ``retrying`` with an exponentially growing,
jittered ``next_attempt_at``, and ``dead`` with its last error after
``dispatch.max_attempts`` attempts. Errors that a retry cannot fix (an HL7 AR, a study
without an accession number, a destination no longer in the configuration) go to
``dead`` at once; ``triage retry`` puts dead deliveries back in the queue.

The transitions themselves are in :mod:`triage.states.delivery`.

Destinations are sent independently (:class:`Dispatcher`): each has its own threads, so
one that hangs delays only its own deliveries. Each delivery is sent inside its own
transaction, with its row locked (``FOR UPDATE SKIP LOCKED`` on PostgreSQL): a second
daemon on the same database skips it, and if this process dies mid-send the lock goes
with its connection, so the row is still due and is sent again at once after a restart.
Everything lives in the row, so a restart resumes where it was.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage.config import Config, DispatchConfig
from triage.db.models import AuditEvent, Delivery, DeliveryState, utcnow
from triage.dispatch.context import DeliveryContext, DeliveryError, load_context
from triage.logs import describe_error, error_frames, get_logger
from triage.states import delivery as delivery_state

log = get_logger(__name__)

Sender = Callable[[Any, DeliveryContext], None]


def _senders() -> dict[str, Sender]:
    # Imported here so that importing the state machine (the CLI's `retry`, the web
    # status) does not pull in pynetdicom's SOP class tables.
    from triage.dispatch.dicom import send_dicom
    from triage.dispatch.hl7 import send_hl7
    from triage.dispatch.ups import send_ups
    from triage.dispatch.webhook import send_webhook

    return {"dicom": send_dicom, "hl7": send_hl7, "ups": send_ups, "webhook": send_webhook}


def backoff_seconds(attempts: int, cfg: DispatchConfig, rng: random.Random) -> float:
    """The wait before the next attempt after ``attempts`` failed ones.

    Doubles from ``backoff_seconds``, times a jitter of 0.5 to 1.5 so that deliveries
    that failed together (a PACS restart) do not all come back in the same second, and
    never more than ``max_backoff_seconds``, jitter included.
    """
    base = min(cfg.max_backoff_seconds, cfg.backoff_seconds * 2.0 ** min(attempts - 1, 62))
    return min(cfg.max_backoff_seconds, base * rng.uniform(0.5, 1.5))


class Dispatcher:
    """Sends due deliveries, each destination on its own threads.

    Destinations are independent: a PACS that accepts connections and never answers
    holds its own threads for its timeouts, while the RIS flag and the others go at once.
    Each destination has at most ``dispatch.max_concurrent_sends`` sends in flight; more
    wait in its queue. :meth:`sweep` hands the due deliveries over and returns at once.

    Parameters
    ----------
    sessions : sessionmaker
        The process's session factory.
    config : Config
        The configuration: destinations by name, retry policy, data folder.
    rng : random.Random, optional
        The source of the backoff jitter; tests pass a seeded one.
    senders : dict, optional
        Sender functions by destination type; the real ones by default.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        config: Config,
        *,
        rng: random.Random | None = None,
        senders: dict[str, Sender] | None = None,
    ) -> None:
        self._sessions = sessions
        self._config = config
        self._rng = rng or random.Random()
        self._senders = senders or _senders()
        self._destinations = {d.name: d for d in config.destinations}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False

    def sweep(self, now: datetime | None = None) -> list[Future[bool]]:
        """Queue every delivery that is pending or retrying and due by ``now``.

        A delivery already queued or in flight in this process is not queued twice.

        Parameters
        ----------
        now : datetime, optional
            Naive UTC time taken as the present; the current time by default.

        Returns
        -------
        list of Future
            One per delivery queued; each says whether that delivery was attempted (False
            when another dispatcher took it or its state changed meanwhile).
        """
        now = now or utcnow()
        with self._sessions() as session:
            due = session.execute(
                select(Delivery.id, Delivery.destination)
                .where(delivery_state.due(now))
                .order_by(Delivery.next_attempt_at, Delivery.id)
            ).all()
        futures = []
        with self._lock:
            if self._closed:
                return []
            for delivery_id, destination in due:
                if delivery_id in self._in_flight:
                    continue
                pool = self._pools.get(destination)
                if pool is None:
                    pool = self._pools[destination] = ThreadPoolExecutor(
                        max_workers=self._config.dispatch.max_concurrent_sends,
                        thread_name_prefix=f"dispatch-{destination}",
                    )
                self._in_flight.add(delivery_id)
                futures.append(pool.submit(self._send, delivery_id, now))
        return futures

    def close(self) -> None:
        """Drop the queued sends and wait for those in flight (their timeouts bound them)."""
        with self._lock:
            self._closed = True
            pools = list(self._pools.values())
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)

    def _send(self, delivery_id: int, now: datetime) -> bool:
        try:
            with self._sessions() as session, session.begin():
                # Locked while it is sent (FOR UPDATE SKIP LOCKED on PostgreSQL): a second
                # daemon on the same database skips it, and if this process dies mid-send
                # the lock goes with its connection, so the row is still due.
                delivery = session.scalars(
                    select(Delivery)
                    .where(Delivery.id == delivery_id, delivery_state.due(now))
                    .with_for_update(skip_locked=True)
                ).first()
                if delivery is None:
                    return False
                _attempt(
                    session,
                    delivery,
                    self._destinations,
                    self._senders,
                    self._config,
                    now,
                    self._rng,
                )
                return True
        except Exception as err:  # the row stays due; the next sweep tries it again
            log.error("delivery_not_recorded", delivery_id=delivery_id, error=type(err).__name__)
            return False
        finally:
            with self._lock:
                self._in_flight.discard(delivery_id)


def dispatch_due(
    sessions: sessionmaker[Session],
    config: Config,
    now: datetime | None = None,
    *,
    rng: random.Random | None = None,
    senders: dict[str, Sender] | None = None,
) -> int:
    """Send every delivery that is pending or retrying and due by ``now``, and wait.

    The one-shot form of :class:`Dispatcher` (the daemon keeps one running); the
    parameters are the same.

    Returns
    -------
    int
        How many deliveries were attempted in this call, whatever their outcome.
    """
    dispatcher = Dispatcher(sessions, config, rng=rng, senders=senders)
    try:
        futures = dispatcher.sweep(now)
        return sum(future.result() for future in futures)
    finally:
        dispatcher.close()


def _attempt(
    session: Session,
    delivery: Delivery,
    destinations: dict[str, Any],
    senders: dict[str, Sender],
    config: Config,
    now: datetime,
    rng: random.Random,
) -> None:
    """Send one claimed delivery and move its row to its next state."""
    attempt = delivery.attempts + 1
    bound = log.bind(delivery_id=delivery.id, destination=delivery.destination, attempt=attempt)
    try:
        destination = destinations.get(delivery.destination)
        if destination is None:
            raise DeliveryError(
                f"destination {delivery.destination!r} is not in the configuration; "
                "add it back and run `triage retry`",
                permanent=True,
            )
        context = load_context(session, delivery, config.data_dir, attempt)
        bound = bound.bind(study_instance_uid=context.study_instance_uid)
        senders[destination.type](destination, context)
    except DeliveryError as err:
        _failed(
            session, delivery, attempt, str(err), err.permanent, config.dispatch, now, rng, bound
        )
    except Exception as err:  # a bug in one sender must not stall the whole queue
        # By class and place: the message of a library's error can quote a value from
        # the report (a name, an accession number), and last_error is shown.
        error = describe_error(err)
        bound.error("delivery_error_unexpected", error=error, frames=error_frames(err))
        message = f"unexpected {error}"
        _failed(session, delivery, attempt, message, False, config.dispatch, now, rng, bound)
    else:
        delivery_state.sent(session, delivery.id, attempt)
        bound.info("delivery_sent")


def _failed(
    session: Session,
    delivery: Delivery,
    attempt: int,
    message: str,
    permanent: bool,
    cfg: DispatchConfig,
    now: datetime,
    rng: random.Random,
    bound: Any,
) -> None:
    if permanent or attempt >= cfg.max_attempts:
        delivery_state.give_up(session, delivery.id, attempt, message)
        bound.error("delivery_dead", error=message, permanent=permanent)
        return
    delay = backoff_seconds(attempt, cfg, rng)
    delivery_state.retry_later(
        session, delivery.id, attempt, message, now + timedelta(seconds=delay)
    )
    bound.warning("delivery_retrying", error=message, retry_in_seconds=round(delay, 1))


def retry_dead(sessions: sessionmaker[Session], destination: str | None = None) -> int:
    """Put dead deliveries back in the queue, due now, with their attempts reset.

    Parameters
    ----------
    sessions : sessionmaker
        The process's session factory.
    destination : str, optional
        Only deliveries to this destination; all dead ones by default.

    Returns
    -------
    int
        How many deliveries were re-queued. An ``AuditEvent`` of kind
        ``deliveries_retried`` records the action, even when it was none.
    """
    now = utcnow()
    with sessions() as session, session.begin():
        stmt = select(Delivery.id).where(Delivery.state == DeliveryState.DEAD)
        if destination is not None:
            stmt = stmt.where(Delivery.destination == destination)
        ids = list(session.scalars(stmt.with_for_update(skip_locked=True)))
        if ids:
            delivery_state.revive(session, ids, now)
        session.add(
            AuditEvent(
                kind="deliveries_retried",
                detail={"destination": destination, "count": len(ids), "delivery_ids": ids},
                created_at=now,
            )
        )
    log.info("deliveries_retried", destination=destination, count=len(ids))
    return len(ids)
