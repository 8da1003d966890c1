"""The delivery state machine: ``pending → sent | retrying(next_at) → dead(error)``.

A delivery is ``pending`` from its creation (the column's default). Each attempt ends
in :func:`sent`, :func:`retry_later` or :func:`give_up`, run in the transaction that
holds the row locked while it is sent (see :mod:`triage.dispatch.dispatcher`);
:func:`revive` is ``triage retry``; :func:`release_held` makes a delivery that waited
for the Secondary Capture series due.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, and_, update
from sqlalchemy.orm import Session

from triage.db.models import Delivery, DeliveryState, utcnow
from triage.states import changed

#: The states a delivery is sent from.
DUE_STATES = (DeliveryState.PENDING, DeliveryState.RETRYING)
_MAX_ERROR = 2000  # characters of last_error kept: the reason, not a whole traceback


def due(now: datetime) -> ColumnElement[bool]:
    """A WHERE condition true for deliveries that should be attempted by ``now``."""
    return and_(Delivery.state.in_(DUE_STATES), Delivery.next_attempt_at <= now)


def _finish_attempt(session: Session, delivery_id: int, **values: object) -> bool:
    return changed(
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.state.in_(DUE_STATES))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    )


def sent(session: Session, delivery_id: int, attempt: int) -> bool:
    """``pending | retrying → sent``, on the ``attempt``-th try."""
    return _finish_attempt(
        session,
        delivery_id,
        state=DeliveryState.SENT,
        attempts=attempt,
        sent_at=utcnow(),
        last_error=None,
    )


def retry_later(
    session: Session, delivery_id: int, attempt: int, error: str, next_attempt_at: datetime
) -> bool:
    """``pending | retrying → retrying``: the ``attempt``-th try failed; the next is due
    at ``next_attempt_at``."""
    return _finish_attempt(
        session,
        delivery_id,
        state=DeliveryState.RETRYING,
        attempts=attempt,
        last_error=error[:_MAX_ERROR],
        next_attempt_at=next_attempt_at,
    )


def give_up(session: Session, delivery_id: int, attempt: int, error: str) -> bool:
    """``pending | retrying → dead``: a retry cannot help, or the attempts ran out."""
    return _finish_attempt(
        session,
        delivery_id,
        state=DeliveryState.DEAD,
        attempts=attempt,
        last_error=error[:_MAX_ERROR],
    )


def revive(session: Session, delivery_ids: Sequence[int], now: datetime) -> int:
    """``dead → pending``, due now with its attempts reset (``triage retry``); returns
    how many changed.

    ``last_error`` stays until the next attempt, so ``triage status`` still says why it
    died.
    """
    result = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(delivery_ids), Delivery.state == DeliveryState.DEAD)
        .values(state=DeliveryState.PENDING, attempts=0, next_attempt_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def release_held(
    session: Session, result_id: int, destinations: Sequence[str], now: datetime
) -> int:
    """Make a result's held deliveries due now (the Secondary Capture series is written,
    or could not be); returns how many changed.

    Only a ``pending`` delivery not yet tried changes: one the hold already let go stays
    as its attempts left it.
    """
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.result_id == result_id,
            Delivery.destination.in_(list(destinations)),
            Delivery.state == DeliveryState.PENDING,
            Delivery.attempts == 0,
        )
        .values(next_attempt_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
