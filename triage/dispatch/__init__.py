"""Delivery of results: the SR and KOS to a PACS, and the priority flag for positives.

Each (result, destination) pair is a ``Delivery`` row. :class:`Dispatcher` sends the
due ones, each destination on its own threads, with backoff and jitter until ``dead``;
:func:`retry_dead` re-queues dead ones.
One module per destination type: :mod:`~triage.dispatch.dicom` (C-STORE, optional TLS),
:mod:`~triage.dispatch.hl7` (ORU^R01 over :mod:`~triage.dispatch.mllp`),
:mod:`~triage.dispatch.ups` (UPS Push N-CREATE) and :mod:`~triage.dispatch.webhook`.
"""

from triage.dispatch.context import DeliveryContext, DeliveryError, load_context
from triage.dispatch.dispatcher import Dispatcher, backoff_seconds, dispatch_due, retry_dead

__all__ = [
    "DeliveryContext",
    "DeliveryError",
    "Dispatcher",
    "backoff_seconds",
    "dispatch_due",
    "load_context",
    "retry_dead",
]
