"""Writes received instances into the queue's tables: study, series and instance rows.

A new instance for a series that was already complete (or queued, or skipped) reopens
it; the completeness sweep looks at it again once it is quiet.

This is the receiver's hot path: every C-STORE waits for it before answering Success.
It therefore uses Core statements, a handful per batch (one lookup and one write per
study and per series, one lookup for all instances, one multi-row insert), rather than
the ORM's identity map and per-object flushes, which cost several milliseconds per
instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from triage.db.models import Instance, Series, SeriesState, Study, utcnow
from triage.logs import get_logger
from triage.receive.header import ReceivedInstance
from triage.states import series as series_state

log = get_logger(__name__)

_studies = cast(Table, Study.__table__)
_series = cast(Table, Series.__table__)
_instances = cast(Table, Instance.__table__)
# SQLite allows at most 32766 bound variables per statement; stay far below it.
_IN_CHUNK = 500


@dataclass
class _Merged:
    """One study's or series' header fields merged over a batch: the last non-empty wins."""

    first: ReceivedInstance
    fields: dict[str, Any] = field(default_factory=dict)
    last_received_at: datetime | None = None
    new_instances: int = 0

    def merge(self, item: ReceivedInstance, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if value is not None and value != "":
                self.fields[key] = value
        if self.last_received_at is None or item.received_at > self.last_received_at:
            self.last_received_at = item.received_at


def _instance_values(item: ReceivedInstance, series_id: int) -> dict[str, Any]:
    h = item.header
    return {
        "series_id": series_id,
        "sop_instance_uid": h.sop_instance_uid,
        "sop_class_uid": h.sop_class_uid,
        "transfer_syntax_uid": h.transfer_syntax_uid,
        "modality": h.modality,
        "image_type": h.image_type,
        "instance_number": h.instance_number,
        "image_position_patient": h.image_position_patient,
        "image_orientation_patient": h.image_orientation_patient,
        "slice_thickness": h.slice_thickness,
        "pixel_spacing": h.pixel_spacing,
        "rows": h.rows,
        "columns": h.columns,
        "file_path": item.file_path,
        "file_size": item.file_size,
        "received_at": item.received_at,
        "missing": False,
    }


def _study_ids(session: Session, studies: dict[str, _Merged]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for uid, merged in studies.items():
        row = session.execute(
            select(_studies.c.id, _studies.c.last_received_at).where(
                _studies.c.study_instance_uid == uid
            )
        ).first()
        last = merged.last_received_at or merged.first.received_at
        if row is None:
            result = session.execute(
                insert(_studies)
                .values(
                    study_instance_uid=uid,
                    first_received_at=merged.first.received_at,
                    last_received_at=last,
                    **merged.fields,
                )
                .returning(_studies.c.id)
            )
            ids[uid] = int(result.scalar_one())
        else:
            ids[uid] = int(row.id)
            if row.last_received_at is not None and row.last_received_at > last:
                last = row.last_received_at
            session.execute(
                update(_studies)
                .where(_studies.c.id == row.id)
                .values(last_received_at=last, **merged.fields)
            )
    return ids


def _series_ids(
    session: Session, series: dict[str, _Merged], study_ids: dict[str, int], now: datetime
) -> dict[str, int]:
    ids: dict[str, int] = {}
    for uid, merged in series.items():
        h = merged.first.header
        row = session.execute(
            select(_series.c.id, _series.c.state).where(_series.c.series_instance_uid == uid)
        ).first()
        if row is None:
            result = session.execute(
                insert(_series)
                .values(
                    study_id=study_ids[h.study_instance_uid],
                    series_instance_uid=uid,
                    instance_count=0,
                    first_received_at=merged.first.received_at,
                    last_received_at=now,
                    **merged.fields,
                )
                .returning(_series.c.id)
            )
            ids[uid] = int(result.scalar_one())
            continue
        ids[uid] = int(row.id)
        session.execute(
            update(_series)
            .where(_series.c.id == row.id)
            .values(last_received_at=now, **merged.fields)
        )
        if row.state != SeriesState.RECEIVING and series_state.reopen(session, row.id):
            log.info(
                "series_reopened",
                study_instance_uid=h.study_instance_uid,
                series_instance_uid=uid,
                previous_state=str(row.state),
            )
    return ids


def record_instances(session: Session, items: Sequence[ReceivedInstance]) -> None:
    """Insert or update the rows for ``items`` in the session's transaction.

    The caller commits. A re-sent instance updates its row in place (and counts once).
    """
    if not items:
        return
    now = utcnow()
    # A SOP Instance UID sent twice in one batch is one row; its last copy wins.
    latest: dict[str, ReceivedInstance] = {}
    studies: dict[str, _Merged] = {}
    series: dict[str, _Merged] = {}
    for item in items:
        h = item.header
        latest[h.sop_instance_uid] = item
        studies.setdefault(h.study_instance_uid, _Merged(item)).merge(
            item,
            {
                "patient_id": h.patient_id,
                "patient_name": h.patient_name,
                "study_description": h.study_description,
                "accession_number": h.accession_number,
                "study_date": h.study_date,
                "study_time": h.study_time,
            },
        )
        series.setdefault(h.series_instance_uid, _Merged(item)).merge(
            item,
            {
                "modality": h.modality,
                "series_description": h.series_description,
                "series_number": h.series_number,
            },
        )

    study_ids = _study_ids(session, studies)
    series_ids = _series_ids(session, series, study_ids, now)

    uids = list(latest)
    existing: dict[str, int] = {}
    for i in range(0, len(uids), _IN_CHUNK):
        rows = session.execute(
            select(_instances.c.sop_instance_uid, _instances.c.id).where(
                _instances.c.sop_instance_uid.in_(uids[i : i + _IN_CHUNK])
            )
        )
        existing.update((r.sop_instance_uid, int(r.id)) for r in rows)

    new_rows: list[dict[str, Any]] = []
    old_rows: list[dict[str, Any]] = []
    for uid, item in latest.items():
        values = _instance_values(item, series_ids[item.header.series_instance_uid])
        if uid in existing:
            # A missing file that is back counts again: ``missing`` is reset above.
            old_rows.append({"_id": existing[uid], **values})
        else:
            new_rows.append(values)
            series[item.header.series_instance_uid].new_instances += 1
    if new_rows:
        session.execute(insert(_instances), new_rows)
    if old_rows:
        session.execute(
            update(_instances)
            .where(_instances.c.id == bindparam("_id"))
            .values({k: bindparam(f"v_{k}") for k in old_rows[0] if k != "_id"}),
            [{f"v_{k}" if k != "_id" else k: v for k, v in r.items()} for r in old_rows],
        )
    counts = [
        {"_id": series_ids[uid], "_n": m.new_instances}
        for uid, m in series.items()
        if m.new_instances
    ]
    if counts:
        session.execute(
            update(_series)
            .where(_series.c.id == bindparam("_id"))
            .values(instance_count=_series.c.instance_count + bindparam("_n")),
            counts,
        )
