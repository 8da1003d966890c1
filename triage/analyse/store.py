"""Store an analysis: the result row, its report files, its deliveries, the job's end.

All in one transaction that first proves the claim still holds. The report files are
written into the outbox before the commit; see :mod:`triage.storage.outbox`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from triage.analyse.decide import Outcome
from triage.analyse.reports import Reports
from triage.config import Config, DicomDestination
from triage.db.models import Decision, Delivery, Job, Result, Series, SeriesState, utcnow
from triage.states import job as job_state
from triage.states.job import Claim
from triage.storage.outbox import KOS_FILE, SR_FILE, partial_dir, publish
from triage.storage.spool import write_durably


@dataclass(frozen=True)
class Stored:
    """What :func:`store_result` committed: the result's id and who gets it."""

    result_id: int
    destinations: list[str]
    # DICOM destinations whose delivery waits for the Secondary Capture series: not due
    # until the worker has written it (or a lease has passed, should the worker die).
    held: list[str] = field(default_factory=list)


def destinations_for(
    decision: Decision, reports: Reports | None, destinations: Sequence[Any]
) -> list[str]:
    """Destination names that get this result: DICOM when there is an object to
    store, the others (the HL7 flag, UPS, webhooks) for every positive."""
    has_object = reports is not None and reports.any
    return [
        d.name
        for d in destinations
        if (has_object if isinstance(d, DicomDestination) else decision == Decision.PRESENT)
    ]


def secondary_capture_destinations(
    outcome: Outcome, reports: Reports | None, config: Config
) -> list[str]:
    """DICOM destinations that get this result's Secondary Capture series: positives
    with flagged slices and heat maps on, where the destination asks for it."""
    if (
        outcome.decision != Decision.PRESENT
        or not outcome.flagged
        or config.worker.heatmap_slices == 0
        or reports is None
        or not reports.any
    ):
        return []
    return [
        d.name
        for d in config.destinations
        if isinstance(d, DicomDestination) and d.send_secondary_capture
    ]


def store_result(
    sessions: sessionmaker[Session],
    claim: Claim,
    outcome: Outcome,
    reports: Reports | None,
    config: Config,
    bundle: Any,
    report_started: float,
    bound: Any,
) -> Stored | None:
    """Write the result, its reports and deliveries, and finish the job, atomically.

    Returns ``None``, having stored nothing, when the job is no longer this claim's or
    its series was reopened while it was analysed (the job then goes back to the
    queue, for the completeness sweep to requeue in full).

    ``report_started`` is the ``time.perf_counter()`` at which building the reports
    began; the result's ``report`` timing runs from there to the files being written.
    """
    with sessions() as session:
        # A write first: on SQLite it takes the write lock, so what is read below
        # cannot change before the commit; everywhere it proves the claim still holds.
        if not job_state.confirm_held(session, claim):
            bound.warning("result_discarded", reason="the job is no longer this worker's")
            return None
        job = session.get(Job, claim.job_id)
        assert job is not None
        series = session.get(Series, job.series_id)
        assert series is not None
        if series.state != SeriesState.QUEUED:
            # New instances arrived while we analysed: this result describes an
            # incomplete series. The completeness sweep requeues the job.
            job_state.return_unanalysed(session, claim)
            session.commit()
            bound.info("result_discarded", reason=f"series is {series.state.value} again")
            return None
        result = Result(
            job_id=job.id,
            series_id=series.id,
            decision=outcome.decision,
            stack_probability=outcome.stack_probability,
            slice_probabilities=outcome.slice_probabilities or {},
            flagged_sop_instance_uids=outcome.flagged or [],
            threshold_stack=outcome.thresholds.stack,
            threshold_slice=outcome.thresholds.slice,
            threshold_source=outcome.thresholds.source,
            bundle_name=bundle.name,
            bundle_version=bundle.version,
            bundle_sha256=bundle.manifest_sha256,
            reason=outcome.reason,
            timings=outcome.timings or {},
        )
        session.add(result)
        session.flush()
        result_id = result.id
        if reports is not None:
            _write_outbox(reports, partial_dir(config.data_dir, result_id), result)
        timings = dict(outcome.timings or {})
        timings["report"] = time.perf_counter() - report_started
        result.timings = timings
        destinations = destinations_for(outcome.decision, reports, config.destinations)
        held = secondary_capture_destinations(outcome, reports, config)
        hold_until = utcnow() + timedelta(seconds=config.worker.lease_seconds)
        for name in destinations:
            delivery = Delivery(result_id=result_id, destination=name)
            if name in held:
                delivery.next_attempt_at = hold_until
            session.add(delivery)
        if outcome.decision == Decision.UNDETERMINED:
            job_state.finish_undetermined(session, claim, outcome.reason)
        else:
            job_state.finish_done(session, claim)
        session.commit()
    # Only now: a crash before the commit leaves a .partial folder that no row owns,
    # and one after it a .partial folder whose row exists; outbox.recover settles both.
    try:
        publish(config.data_dir, result_id)
    except OSError as err:  # the result stands; recover() renames the folder later
        bound.error("outbox_publish_failed", result_id=result_id, error=str(err))
    return Stored(result_id=result_id, destinations=destinations, held=held)


def _write_outbox(reports: Reports, outbox: Path, result: Result) -> None:
    """Write the files durably and record their SOP Instance UIDs on the result."""
    if outbox.exists():
        # Left by a crash before a commit that never came (SQLite reuses the id).
        shutil.rmtree(outbox)
    if reports.sr is not None:
        write_durably(outbox / SR_FILE, reports.sr)
        result.sr_sop_instance_uid = reports.sr_uid
    if reports.kos is not None:
        write_durably(outbox / KOS_FILE, reports.kos)
        result.kos_sop_instance_uid = reports.kos_uid
