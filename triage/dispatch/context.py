"""What a sender needs to know about one delivery, and how it says that it failed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from triage.db.models import Decision, Delivery, Result, Series
from triage.errors import TriageError
from triage.storage.outbox import KEY_IMAGES_DIR, KOS_FILE, SR_FILE, outbox_dir


class DeliveryError(TriageError):
    """A send failed; ``permanent`` says that retrying the same thing cannot help.

    Parameters
    ----------
    message : str
        What went wrong, for ``last_error``; it never holds patient identifiers.
    permanent : bool
        True when a retry would fail the same way (an HL7 AR, a missing accession
        number): the delivery goes straight to ``dead``.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class DeliveryContext:
    """One delivery's result, study and output files, read from the database.

    ``patient_id`` and ``accession_number`` are left out of ``repr`` so that a context
    that ends up in a log line or a traceback does not carry them.
    """

    delivery_id: int
    attempt: int
    destination: str
    result_id: int
    decision: Decision
    stack_probability: float | None
    flagged_slice_count: int
    study_instance_uid: str
    series_instance_uid: str
    sr_path: Path
    kos_path: Path | None
    sr_sop_instance_uid: str | None
    kos_sop_instance_uid: str | None
    bundle_name: str | None
    bundle_version: str | None
    created_at: datetime
    accession_number: str | None = field(default=None, repr=False)
    patient_id: str | None = field(default=None, repr=False)
    # The result's key images, with the Secondary Capture series of a positive (see
    # triage.analyse.key_images); it may not exist.
    key_images_dir: Path | None = None

    @property
    def is_positive(self) -> bool:
        """Whether the result says pulmonary embolism is present."""
        return self.decision == Decision.PRESENT


def load_context(
    session: Session, delivery: Delivery, data_dir: Path, attempt: int
) -> DeliveryContext:
    """Read everything a sender needs for ``delivery`` from the database.

    Parameters
    ----------
    session : Session
        The session that holds ``delivery``.
    delivery : Delivery
        The claimed delivery row.
    data_dir : Path
        The daemon's data folder; the outbox is under it.
    attempt : int
        The number of this attempt, from 1.

    Returns
    -------
    DeliveryContext
        The delivery's context. The files' existence is not checked here.
    """
    result = session.get(Result, delivery.result_id)
    if result is None:  # the foreign key cascades, so only a concurrent delete gets here
        raise DeliveryError(f"result {delivery.result_id} no longer exists", permanent=True)
    series = session.get(Series, result.series_id)
    if series is None:
        raise DeliveryError(f"series of result {result.id} no longer exists", permanent=True)
    study = series.study
    outbox = outbox_dir(data_dir, result.id)
    positive = result.decision == Decision.PRESENT
    return DeliveryContext(
        delivery_id=delivery.id,
        attempt=attempt,
        destination=delivery.destination,
        result_id=result.id,
        decision=Decision(result.decision),
        stack_probability=result.stack_probability,
        flagged_slice_count=len(result.flagged_sop_instance_uids or []),
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        sr_path=outbox / SR_FILE,
        # Only positives with flagged slices have a KOS (the worker records its UID when it
        # writes one); a negative that somehow has one is not sent it.
        kos_path=outbox / KOS_FILE if positive and result.kos_sop_instance_uid else None,
        sr_sop_instance_uid=result.sr_sop_instance_uid,
        kos_sop_instance_uid=result.kos_sop_instance_uid,
        bundle_name=result.bundle_name,
        bundle_version=result.bundle_version,
        created_at=result.created_at,
        accession_number=study.accession_number,
        patient_id=study.patient_id,
        key_images_dir=outbox / KEY_IMAGES_DIR,
    )
