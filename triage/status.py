"""``triage status``: what the queue holds, for admins and for scripts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from triage.db.models import Instance, Job, Series, Study


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def collect_status(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Studies with their series and jobs, plus counts by state.

    Patient ID and accession number are left out on purpose: this output is pasted into
    tickets and chats. The worklist shows them to radiologists.
    """
    with sessions() as session:
        missing = dict(
            session.execute(
                select(Instance.series_id, func.count())
                .where(Instance.missing.is_(True))
                .group_by(Instance.series_id)
            ).all()
        )
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
                        "state": s.state.value,
                        "skip_reason": s.skip_reason,
                        "instances": s.instance_count,
                        "missing_instances": missing.get(s.id, 0),
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
    return {
        "counts": {
            "studies": len(studies),
            "instances": instances,
            "instances_missing": sum(missing.values()),
            "series": {str(k.value): v for k, v in series_counts.items()},
            "jobs": {str(k.value): v for k, v in job_counts.items()},
        },
        "studies": out_studies,
    }


def format_status(status: dict[str, Any]) -> str:
    """A plain-text rendering of :func:`collect_status` for a terminal."""
    c = status["counts"]
    lines = [
        f"studies: {c['studies']}   instances: {c['instances']} (missing {c['instances_missing']})",
        "series: " + (", ".join(f"{k} {v}" for k, v in sorted(c["series"].items())) or "none"),
        "jobs:   " + (", ".join(f"{k} {v}" for k, v in sorted(c["jobs"].items())) or "none"),
    ]
    for study in status["studies"]:
        lines.append("")
        lines.append(
            f"study {study['study_instance_uid']}  (last received {study['last_received_at']})"
        )
        for s in study["series"]:
            desc = s["series_description"] or ""
            state = s["state"] + (f" ({s['skip_reason']})" if s["skip_reason"] else "")
            job = s["job"]
            job_text = f"  job {job['job_id']} {job['state']}" if job else ""
            miss = f", {s['missing_instances']} missing" if s["missing_instances"] else ""
            lines.append(
                f"  series {s['series_number'] if s['series_number'] is not None else '-'}"
                f" {s['modality'] or '?'} {desc!r}: {s['instances']} instances{miss}; "
                f"{state}{job_text}"
            )
            lines.append(f"    {s['series_instance_uid']}")
    return "\n".join(lines)
