"""``triage status``: what the queue holds, for admins and for scripts.

A series' ``state`` is where it really is: once queued, its job's state (``running``,
``done``, ``undetermined``, ``failed``); ``series_state`` keeps the series' own state
machine value. Each delivery says what went (for a DICOM destination the SR and KOS by
SOP Instance UID, and the Secondary Capture series where it was sent), where, and when.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from triage.config import DicomDestination
from triage.db.models import (
    Decision,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    Result,
    Series,
    SeriesState,
    Study,
)


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _objects(result: Result, destination: Any) -> list[str]:
    """What a delivery to ``destination`` carries (see triage.dispatch)."""
    if isinstance(destination, DicomDestination):
        objects = []
        if result.sr_sop_instance_uid:
            objects.append(f"SR {result.sr_sop_instance_uid}")
        if result.decision == Decision.PRESENT and result.kos_sop_instance_uid:
            objects.append(f"KOS {result.kos_sop_instance_uid}")
        if destination.send_secondary_capture and result.decision == Decision.PRESENT:
            objects.append("Secondary Capture series, if its heat maps were made")
        return objects
    kind = getattr(destination, "type", None)
    return {"hl7": ["ORU^R01"], "ups": ["UPS workitem"], "webhook": ["JSON POST"]}.get(
        str(kind), []
    )


def _result(result: Result | None, destinations: dict[str, Any]) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "result_id": result.id,
        "decision": result.decision.value,
        "stack_probability": result.stack_probability,
        "threshold_stack": result.threshold_stack,
        "threshold_slice": result.threshold_slice,
        "threshold_source": result.threshold_source,
        "flagged_slices": len(result.flagged_sop_instance_uids or []),
        "reason": result.reason,
        "bundle": f"{result.bundle_name} {result.bundle_version}",
        "bundle_sha256": result.bundle_sha256,
        "created_at": _iso(result.created_at),
        "sr_sop_instance_uid": result.sr_sop_instance_uid,
        "kos_sop_instance_uid": result.kos_sop_instance_uid,
        "deliveries": [
            {
                "destination": d.destination,
                "type": getattr(destinations.get(d.destination), "type", None),
                "objects": _objects(result, destinations.get(d.destination)),
                "state": d.state.value,
                "sent_at": _iso(d.sent_at),
                "attempts": d.attempts,
                "next_attempt_at": _iso(d.next_attempt_at)
                if d.state is DeliveryState.RETRYING
                else None,
                "last_error": d.last_error
                if d.state in (DeliveryState.RETRYING, DeliveryState.DEAD)
                else None,
            }
            for d in sorted(result.deliveries, key=lambda d: d.id)
        ],
    }


def shown_state(series: Series) -> str:
    """The series' state as an admin means it: a queued series' job state once it has one."""
    if series.state == SeriesState.QUEUED and series.job is not None:
        return series.job.state.value
    return series.state.value


def collect_status(
    sessions: sessionmaker[Session], destinations: Sequence[Any] = ()
) -> dict[str, Any]:
    """Studies with their series, jobs and latest results, plus counts by state.

    ``destinations`` (the configuration's) name what each delivery carries; one missing
    from them (renamed since) is shown without.

    Patient ID and accession number are left out on purpose: this output is pasted into
    tickets and chats. The worklist shows them to radiologists.
    """
    by_name = {d.name: d for d in destinations}
    with sessions() as session:
        # Images the retention sweep let go are not missing: they served their purpose.
        missing = dict(
            session.execute(
                select(Instance.series_id, func.count())
                .join(Series, Series.id == Instance.series_id)
                .where(Instance.missing.is_(True), Series.spool_released_at.is_(None))
                .group_by(Instance.series_id)
            ).all()
        )
        # A reopened series keeps its older results for the audit trail; show the newest.
        newest = select(func.max(Result.id)).group_by(Result.series_id)
        latest: dict[int, Result] = {
            r.series_id: r for r in session.scalars(select(Result).where(Result.id.in_(newest)))
        }
        studies = session.scalars(select(Study).order_by(Study.first_received_at)).all()
        out_studies = []
        for study in studies:
            series_out = []
            for s in sorted(study.series, key=lambda x: (x.series_number or 0, x.id)):
                job: Job | None = s.job
                series_out.append(
                    {
                        "series_instance_uid": s.series_instance_uid,
                        "series_number": s.series_number,
                        "modality": s.modality,
                        "series_description": s.series_description,
                        "state": shown_state(s),
                        "series_state": s.state.value,
                        "skip_reason": s.skip_reason,
                        "instances": s.instance_count,
                        "missing_instances": missing.get(s.id, 0),
                        "spool_released_at": _iso(s.spool_released_at),
                        "last_received_at": _iso(s.last_received_at),
                        "job": None
                        if job is None
                        else {
                            "job_id": job.id,
                            "state": job.state.value,
                            "reason": job.reason,
                            "error": job.error,
                            "attempts": job.attempts,
                        },
                        "result": _result(latest.get(s.id), by_name),
                    }
                )
            out_studies.append(
                {
                    "study_instance_uid": study.study_instance_uid,
                    "first_received_at": _iso(study.first_received_at),
                    "last_received_at": _iso(study.last_received_at),
                    "series": series_out,
                }
            )
        series_counts = dict(
            session.execute(select(Series.state, func.count()).group_by(Series.state)).all()
        )
        job_counts = dict(
            session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        )
        instances = session.scalar(select(func.count()).select_from(Instance)) or 0
        delivery_counts = dict(
            session.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
        )
    return {
        "counts": {
            "studies": len(studies),
            "instances": instances,
            "instances_missing": sum(missing.values()),
            "series": {str(k.value): v for k, v in series_counts.items()},
            "jobs": {str(k.value): v for k, v in job_counts.items()},
            "deliveries": {str(k.value): v for k, v in delivery_counts.items()},
        },
        "studies": out_studies,
    }


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def format_status(status: dict[str, Any]) -> str:
    """A plain-text rendering of :func:`collect_status` for a terminal."""
    c = status["counts"]
    lines = [
        f"studies: {c['studies']}   instances: {c['instances']} (missing {c['instances_missing']})",
        "series: " + (", ".join(f"{k} {v}" for k, v in sorted(c["series"].items())) or "none"),
        "jobs:   " + (", ".join(f"{k} {v}" for k, v in sorted(c["jobs"].items())) or "none"),
        "deliveries: "
        + (", ".join(f"{k} {v}" for k, v in sorted(c["deliveries"].items())) or "none"),
    ]
    if c["deliveries"].get("dead"):
        lines.append("  dead deliveries will not be retried: run `triage retry` once fixed")
    for study in status["studies"]:
        lines.append("")
        lines.append(
            f"study {study['study_instance_uid']}  (last received {study['last_received_at']})"
        )
        for s in study["series"]:
            desc = s["series_description"] or ""
            state = s["state"] + (f" ({s['skip_reason']})" if s["skip_reason"] else "")
            job = s["job"]
            job_text = f"  job {job['job_id']}" if job else ""
            result = s["result"]
            if result is not None:
                probability = result["stack_probability"]
                job_text += f"  PE {result['decision']}" + (
                    f" (p={probability:.3f}, threshold {_number(result['threshold_stack'])})"
                    if probability is not None
                    else f" ({result['reason']})"
                )
            miss = f", {s['missing_instances']} missing" if s["missing_instances"] else ""
            if s["spool_released_at"]:
                miss += f", images released {s['spool_released_at']} (retention)"
            lines.append(
                f"  series {s['series_number'] if s['series_number'] is not None else '-'}"
                f" {s['modality'] or '?'} {desc!r}: {s['instances']} instances{miss}; "
                f"{state}{job_text}"
            )
            lines.append(f"    {s['series_instance_uid']}")
            for d in (result or {}).get("deliveries", []):
                extra = (
                    f" after {d['attempts']} attempts: {d['last_error']}" if d["last_error"] else ""
                )
                when = f" at {d['sent_at']}" if d["sent_at"] else ""
                lines.append(f"    delivery {d['destination']}: {d['state']}{when}{extra}")
                lines.extend(f"      {item}" for item in d["objects"])
    return "\n".join(lines)
