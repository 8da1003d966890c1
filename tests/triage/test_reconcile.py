"""Start-up reconciliation of spool and database."""

from __future__ import annotations

from dicom_factory import ct_slice
from sqlalchemy import select
from support import open_db

from triage.db import (
    Instance,
    Job,
    JobState,
    Series,
    SeriesState,
)
from triage.storage.reconcile import reconcile
from triage.storage.spool import instance_path, write_durably


def test_reconcile_repairs_every_kind_of_disagreement(tmp_path, db_url: str) -> None:
    spool = tmp_path / "spool"
    sessions = open_db(db_url)

    # Two instances whose rows exist, via the normal path.
    from triage.receive.header import ReceivedInstance, parse_header
    from triage.receive.ingest import record_instances

    kept, lost = (ct_slice("1.2.9", "1.2.9.1", i) for i in range(2))
    for ds in (kept, lost):
        from io import BytesIO

        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        path = instance_path(spool, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        size = write_durably(path, buf.getvalue())
        with sessions() as s:
            record_instances(
                s,
                [
                    ReceivedInstance(
                        parse_header(buf.getvalue()),
                        str(path.relative_to(spool)),
                        size,
                        __import__("triage.db.models").db.models.utcnow(),
                    )
                ],
            )
            s.commit()
    # A file whose row was never committed (kill -9 between fsync and commit).
    orphan = ct_slice("1.2.9", "1.2.9.2", 0)
    orphan_path = instance_path(spool, "1.2.9", "1.2.9.2", orphan.SOPInstanceUID)
    orphan_path.parent.mkdir(parents=True)
    orphan.save_as(orphan_path, enforce_file_format=True)
    # A temp file from an interrupted write, never acknowledged.
    temp = orphan_path.with_name(f".{orphan.SOPInstanceUID}.dcm.abcd1234.tmp")
    temp.write_bytes(b"partial")
    # A row whose file has gone.
    instance_path(spool, "1.2.9", "1.2.9.1", lost.SOPInstanceUID).unlink()
    # A job left running by a dead worker.
    with sessions() as s:
        series = s.scalar(select(Series).where(Series.series_instance_uid == "1.2.9.1"))
        assert series is not None
        series.state = SeriesState.QUEUED
        s.add(Job(series=series, state=JobState.RUNNING, attempts=1, worker_id="w1"))
        s.commit()

    report = reconcile(sessions, spool)

    assert report.temp_files_removed == 1
    assert not temp.exists()
    assert report.files_indexed == 1
    assert report.rows_marked_missing == 1
    assert report.jobs_requeued == 1
    with sessions() as s:
        rows = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
        assert rows[orphan.SOPInstanceUID].file_path == str(orphan_path.relative_to(spool))
        assert rows[lost.SOPInstanceUID].missing is True
        assert rows[kept.SOPInstanceUID].missing is False
        job = s.scalar(select(Job))
        assert job is not None and job.state is JobState.QUEUED and job.worker_id is None
        orphan_series = s.scalar(select(Series).where(Series.series_instance_uid == "1.2.9.2"))
        assert orphan_series is not None and orphan_series.state is SeriesState.RECEIVING

    # Running it again changes nothing.
    again = reconcile(sessions, spool)
    assert (again.files_indexed, again.rows_marked_missing, again.temp_files_removed) == (0, 0, 0)
