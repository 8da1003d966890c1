"""The radiologists' worklist: one row per study, PE-positive studies first.

Positives are ordered by probability, highest first. Everything else keeps its arrival
order, so a negative study is never pushed below a study that arrived after it: only a
positive may overtake it. Studies whose every series was skipped (scouts, dose reports)
go last, so they are visible without taking a reader's attention.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from triage.db.models import (
    Decision,
    Delivery,
    DeliveryState,
    Feedback,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    Study,
)

#: The states a row can show, in the words the page uses.
ROW_STATES = (
    "receiving",
    "queued",
    "analysing",
    "done",
    "undetermined",
    "failed",
    "skipped",
)

# Errors from a PACS or RIS can be long stack-like texts; a table cell shows the start.
_MAX_ERROR_CHARS = 120


@dataclass(frozen=True)
class DeliveryStatus:
    """Where one result's copy for one destination stands."""

    destination: str
    state: str
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class WorklistRow:
    """One study as the worklist shows it.

    Attributes
    ----------
    study_instance_uid : str
        The study, for links and for matching rows across refreshes.
    accession_number : str or None
        What radiologists look a study up by; shown, never logged.
    arrived_at : datetime
        When the first instance of the study arrived (naive UTC).
    state : str
        One of :data:`ROW_STATES`, for the study's most relevant series.
    flagged : bool
        True when the model found pulmonary embolism (decision ``present``).
    decision : str or None
        ``present``, ``absent`` or ``undetermined``; None before a result exists.
    probability : float or None
        The study-level probability of PE, 0 to 1.
    flagged_slices : int
        How many slices the model flagged.
    delivery : str
        A one-line summary of the result's deliveries, such as ``sent 2/2``,
        ``retrying (pacs)`` or ``dead (ris: connection refused)``; empty before a result.
    detail : str or None
        Why a series was skipped or undetermined, or why its job failed.
    series_instance_uid : str or None
        The series the row's state and result come from.
    series_description : str or None
        That series' description, which tells a reader which reconstruction was read.
    deliveries : list of DeliveryStatus
        Each destination's state, for the JSON API.
    feedback : str or None
        The latest radiologist's verdict on the result, ``confirmed`` or ``rejected``.
    feedback_by : str or None
        Who gave it: the ``web.users`` name, ``web.token`` or ``loopback (no token)``.
    feedback_at : datetime or None
        When it was given (UTC).
    patient_name, patient_id : str or None
        Shown only to readers allowed to see them (see :func:`WorklistRow.to_json`).
    study_description, study_date : str or None
        As the modality sent them (the date as DICOM ``YYYYMMDD``).
    """

    study_instance_uid: str
    accession_number: str | None
    arrived_at: datetime
    state: str
    flagged: bool
    decision: str | None
    probability: float | None
    flagged_slices: int
    delivery: str
    detail: str | None
    series_instance_uid: str | None
    series_description: str | None
    deliveries: list[DeliveryStatus] = field(default_factory=list)
    feedback: str | None = None
    feedback_by: str | None = None
    feedback_at: datetime | None = None
    patient_name: str | None = None
    patient_id: str | None = None
    study_description: str | None = None
    study_date: str | None = None

    def to_json(self, identity: bool = False) -> dict[str, Any]:
        """The row as the JSON API returns it; times are ISO 8601 UTC with a ``Z``.

        ``patient_name`` and ``patient_id`` are in it only when ``identity`` is true.
        """
        identified = (
            {"patient_name": self.patient_name, "patient_id": self.patient_id} if identity else {}
        )
        return {
            **identified,
            "study_description": self.study_description,
            "study_date": self.study_date,
            "study_instance_uid": self.study_instance_uid,
            "accession_number": self.accession_number,
            "arrived_at": self.arrived_at.isoformat(timespec="seconds") + "Z",
            "state": self.state,
            "flagged": self.flagged,
            "decision": self.decision,
            "probability": self.probability,
            "probability_percent": (
                None if self.probability is None else round(self.probability * 100, 1)
            ),
            "flagged_slices": self.flagged_slices,
            "delivery": self.delivery,
            "detail": self.detail,
            "series_instance_uid": self.series_instance_uid,
            "series_description": self.series_description,
            "feedback": self.feedback,
            "feedback_by": self.feedback_by,
            "feedback_at": (
                None
                if self.feedback_at is None
                else self.feedback_at.isoformat(timespec="seconds") + "Z"
            ),
            "deliveries": [
                {
                    "destination": d.destination,
                    "state": d.state,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                }
                for d in self.deliveries
            ],
        }


@dataclass
class _SeriesView:
    series: Series
    job: Job | None
    result: Result | None
    deliveries: list[Delivery]

    @property
    def state(self) -> str:
        job = self.job
        if self.series.state == SeriesState.SKIPPED:
            return "skipped"
        if self.series.state == SeriesState.RECEIVING:
            # A reopened series is receiving again, whatever its old job says.
            return "receiving"
        if job is None:
            # Complete but not yet through the selection rules: for a reader it is
            # waiting for analysis, which the scheduler decides within one sweep.
            return "queued"
        return {
            JobState.QUEUED: "queued",
            JobState.RUNNING: "analysing",
            JobState.DONE: "done",
            JobState.UNDETERMINED: "undetermined",
            JobState.FAILED: "failed",
        }[job.state]

    @property
    def flagged(self) -> bool:
        return self.result is not None and self.result.decision == Decision.PRESENT

    @property
    def probability(self) -> float | None:
        return None if self.result is None else self.result.stack_probability

    def relevance(self) -> tuple[int, float]:
        """Smaller is more relevant: which series speaks for the study."""
        prob = self.probability if self.probability is not None else -1.0
        if self.flagged:
            # A positive anywhere in the study makes the study positive.
            return (0, -prob)
        state = self.state
        if self.job is not None and state in ("analysing", "queued"):
            # The study's verdict is still pending while one of its CTPAs is analysed.
            return (1, 0.0 if state == "analysing" else 1.0)
        if state == "done":
            return (2, -prob)
        if state == "undetermined":
            return (3, 0.0)
        if state == "failed":
            return (4, 0.0)
        if state in ("receiving", "queued"):
            return (5, 0.0)
        return (6, 0.0)

    def detail(self) -> str | None:
        state = self.state
        if state == "skipped":
            return self.series.skip_reason
        if state == "undetermined":
            reason = self.job.reason if self.job is not None else None
            if reason is None and self.result is not None:
                reason = self.result.reason
            return reason
        if state == "failed" and self.job is not None:
            return _shorten(self.job.error)
        return None


def _shorten(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def _flagged_count(result: Result | None) -> int:
    if result is None:
        return 0
    flagged = result.flagged_sop_instance_uids
    return len(flagged) if isinstance(flagged, list) else 0


def summarise_deliveries(deliveries: list[Delivery]) -> str:
    """A one-line account of a result's deliveries, the most urgent state first.

    Parameters
    ----------
    deliveries : list of Delivery
        The deliveries of one result.

    Returns
    -------
    str
        For example ``sent 2/2``, ``retrying (pacs); sent 1/2`` or
        ``dead (ris: connection refused)``; empty when there are none.
    """
    if not deliveries:
        return ""
    ordered = sorted(deliveries, key=lambda d: d.destination)
    total = len(ordered)
    by_state: dict[DeliveryState, list[Delivery]] = defaultdict(list)
    for d in ordered:
        by_state[d.state].append(d)
    sent = len(by_state[DeliveryState.SENT])
    parts: list[str] = []
    if by_state[DeliveryState.DEAD]:
        parts.append(
            "dead ("
            + ", ".join(
                f"{d.destination}: {_shorten(d.last_error) or 'no error recorded'}"
                for d in by_state[DeliveryState.DEAD]
            )
            + ")"
        )
    if by_state[DeliveryState.RETRYING]:
        names = ", ".join(d.destination for d in by_state[DeliveryState.RETRYING])
        parts.append(f"retrying ({names})")
    if by_state[DeliveryState.PENDING]:
        names = ", ".join(d.destination for d in by_state[DeliveryState.PENDING])
        parts.append(f"pending ({names})")
    if sent or not parts:
        parts.append(f"sent {sent}/{total}")
    return "; ".join(parts)


def _row(study: Study, views: list[_SeriesView], verdicts: dict[int, Feedback]) -> WorklistRow:
    best = min(views, key=lambda v: (v.relevance(), v.series.id)) if views else None

    if best is None:
        # The study row exists before its first series row commits.
        return WorklistRow(
            study_instance_uid=study.study_instance_uid,
            accession_number=study.accession_number,
            arrived_at=study.first_received_at,
            state="receiving",
            flagged=False,
            decision=None,
            probability=None,
            flagged_slices=0,
            delivery="",
            detail=None,
            series_instance_uid=None,
            series_description=None,
            patient_name=study.patient_name,
            patient_id=study.patient_id,
            study_description=study.study_description,
            study_date=study.study_date,
        )
    verdict = verdicts.get(best.result.id) if best.result is not None else None
    return WorklistRow(
        study_instance_uid=study.study_instance_uid,
        accession_number=study.accession_number,
        arrived_at=study.first_received_at,
        state=best.state,
        flagged=best.flagged,
        decision=None if best.result is None else best.result.decision.value,
        probability=best.probability,
        flagged_slices=_flagged_count(best.result),
        delivery=summarise_deliveries(best.deliveries),
        detail=best.detail(),
        series_instance_uid=best.series.series_instance_uid,
        series_description=best.series.series_description,
        deliveries=[
            DeliveryStatus(d.destination, d.state.value, d.attempts, _shorten(d.last_error))
            for d in sorted(best.deliveries, key=lambda d: d.destination)
        ],
        feedback=verdict.verdict.value if verdict else None,
        feedback_by=verdict.who if verdict else None,
        feedback_at=verdict.created_at if verdict else None,
        patient_name=study.patient_name,
        patient_id=study.patient_id,
        study_description=study.study_description,
        study_date=study.study_date,
    )


def order_rows(rows: list[WorklistRow]) -> list[WorklistRow]:
    """Sort rows for reading: positives by probability, the rest by arrival, skipped last.

    Parameters
    ----------
    rows : list of WorklistRow
        Rows in any order.

    Returns
    -------
    list of WorklistRow
        Positives first, most probable first (earlier arrival breaks a tie); then every
        other study in arrival order; then studies with nothing to analyse.
    """

    def key(row: WorklistRow) -> tuple[int, float, datetime, str]:
        if row.flagged:
            prob = row.probability if row.probability is not None else 0.0
            return (0, -prob, row.arrived_at, row.study_instance_uid)
        group = 2 if row.state == "skipped" else 1
        return (group, 0.0, row.arrived_at, row.study_instance_uid)

    return sorted(rows, key=key)


def worklist_rows(
    sessions: sessionmaker[Session], since: datetime | None = None
) -> list[WorklistRow]:
    """Read the worklist from the database, in reading order.

    A handful of set queries rather than one query per study, so a page refresh stays
    cheap with thousands of studies on the list.

    Parameters
    ----------
    sessions : sessionmaker
        The process's session factory.
    since : datetime, optional
        Only studies that received an instance at or after this naive UTC time; every
        study when ``None``.

    Returns
    -------
    list of WorklistRow
        One row per study, ordered by :func:`order_rows`.
    """
    with sessions() as session:
        listed = select(Study)
        if since is not None:
            listed = listed.where(Study.last_received_at >= since)
        studies = session.scalars(listed).all()
        study_ids = listed.with_only_columns(Study.id).scalar_subquery()
        series_ids = select(Series.id).where(Series.study_id.in_(study_ids)).scalar_subquery()
        series_by_study: dict[int, list[Series]] = defaultdict(list)
        for s in session.scalars(select(Series).where(Series.study_id.in_(study_ids))).all():
            series_by_study[s.study_id].append(s)
        jobs = {
            j.series_id: j
            for j in session.scalars(select(Job).where(Job.series_id.in_(series_ids))).all()
        }
        # A reopened series keeps its earlier results for the audit trail; the newest one
        # speaks for it, and stays shown while the series is re-analysed, so a positive
        # that was already raised does not silently drop down the list.
        latest_ids = (
            select(func.max(Result.id))
            .where(Result.series_id.in_(series_ids))
            .group_by(Result.series_id)
            .scalar_subquery()
        )
        results = {
            r.series_id: r for r in session.scalars(select(Result).where(Result.id.in_(latest_ids)))
        }
        deliveries: dict[int, list[Delivery]] = defaultdict(list)
        for d in session.scalars(select(Delivery).where(Delivery.result_id.in_(latest_ids))):
            deliveries[d.result_id].append(d)

        # Each shown result's newest verdict (a radiologist may change their mind).
        newest_feedback = (
            select(func.max(Feedback.id))
            .where(Feedback.result_id.in_(latest_ids))
            .group_by(Feedback.result_id)
            .scalar_subquery()
        )
        verdicts = {
            f.result_id: f
            for f in session.scalars(select(Feedback).where(Feedback.id.in_(newest_feedback)))
        }
        rows = []
        for study in studies:
            views = []
            for s in series_by_study.get(study.id, []):
                result = results.get(s.id)
                views.append(
                    _SeriesView(
                        series=s,
                        job=jobs.get(s.id),
                        result=result,
                        deliveries=deliveries.get(result.id, []) if result else [],
                    )
                )
            rows.append(_row(study, views, verdicts))
    return order_rows(rows)
