"""Writes received instances into the queue's tables: study, series and instance rows.

A new instance for a series that was already complete (or queued, or skipped) reopens
it; the completeness sweep looks at it again once it is quiet.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.db.models import Instance, Series, SeriesState, Study, utcnow
from triage.header import ReceivedInstance
from triage.logs import get_logger

log = get_logger(__name__)


def record_instances(session: Session, items: Sequence[ReceivedInstance]) -> None:
    """Insert or update the rows for ``items`` in the session's transaction.

    The caller commits. A re-sent instance updates its row in place.
    """
    studies: dict[str, Study] = {}
    series_by_uid: dict[str, Series] = {}
    now = utcnow()
    for item in items:
        h = item.header
        study = studies.get(h.study_instance_uid)
        if study is None:
            study = session.scalar(
                select(Study).where(Study.study_instance_uid == h.study_instance_uid)
            )
            if study is None:
                study = Study(
                    study_instance_uid=h.study_instance_uid,
                    first_received_at=item.received_at,
                )
                session.add(study)
            studies[h.study_instance_uid] = study
        study.last_received_at = max(item.received_at, study.last_received_at or item.received_at)
        study.patient_id = h.patient_id or study.patient_id
        study.accession_number = h.accession_number or study.accession_number
        study.study_date = h.study_date or study.study_date
        study.study_time = h.study_time or study.study_time

        series = series_by_uid.get(h.series_instance_uid)
        if series is None:
            series = session.scalar(
                select(Series).where(Series.series_instance_uid == h.series_instance_uid)
            )
            if series is None:
                series = Series(
                    study=study,
                    series_instance_uid=h.series_instance_uid,
                    state=SeriesState.RECEIVING,
                    instance_count=0,
                    first_received_at=item.received_at,
                )
                session.add(series)
            series_by_uid[h.series_instance_uid] = series
        series.modality = h.modality or series.modality
        series.series_description = h.series_description or series.series_description
        if h.series_number is not None:
            series.series_number = h.series_number
        series.last_received_at = now
        if series.state is not SeriesState.RECEIVING:
            log.info(
                "series_reopened",
                study_instance_uid=h.study_instance_uid,
                series_instance_uid=h.series_instance_uid,
                previous_state=series.state.value,
            )
            series.state = SeriesState.RECEIVING
            series.skip_reason = None
            series.completed_at = None

        instance = session.scalar(
            select(Instance).where(Instance.sop_instance_uid == h.sop_instance_uid)
        )
        if instance is None:
            instance = Instance(sop_instance_uid=h.sop_instance_uid, series=series)
            session.add(instance)
            series.instance_count = (series.instance_count or 0) + 1
        elif instance.missing:
            # The file had been lost and is now back; it counts again.
            instance.missing = False
        instance.series = series
        instance.sop_class_uid = h.sop_class_uid
        instance.transfer_syntax_uid = h.transfer_syntax_uid
        instance.modality = h.modality
        instance.image_type = h.image_type
        instance.instance_number = h.instance_number
        instance.image_position_patient = h.image_position_patient
        instance.image_orientation_patient = h.image_orientation_patient
        instance.slice_thickness = h.slice_thickness
        instance.pixel_spacing = h.pixel_spacing
        instance.rows = h.rows
        instance.columns = h.columns
        instance.file_path = item.file_path
        instance.file_size = item.file_size
        instance.received_at = item.received_at
        session.flush()
