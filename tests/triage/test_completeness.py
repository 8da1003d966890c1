"""Series completeness after a quiet period, selection rules, and reopening."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from dicom_factory import ct_slice
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import select

from triage.analyse.completeness import sweep_series
from triage.db import Job, JobState, Series, SeriesState
from triage.db.models import utcnow


def _send(port: int, datasets: list) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
    assert assoc.is_established
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()


def _series(rx, uid: str) -> Series:
    with rx.sessions() as s:
        row = s.scalar(select(Series).where(Series.series_instance_uid == uid))
        assert row is not None
        s.expunge(row)
        return row


SELECTION = {"min_slices": 5}


def test_series_completes_only_after_quiet_period(start_receiver, db_url: str) -> None:
    rx = start_receiver(db_url, series={"stable_seconds": 1.0, "selection": SELECTION})
    _send(rx.port, [ct_slice("1.2.5", "1.2.5.1", i) for i in range(6)])
    assert sweep_series(rx.sessions, rx.config.series) == 0
    assert _series(rx, "1.2.5.1").state is SeriesState.RECEIVING
    time.sleep(1.1)
    assert sweep_series(rx.sessions, rx.config.series) == 1
    series = _series(rx, "1.2.5.1")
    assert series.state is SeriesState.QUEUED
    with rx.sessions() as s:
        job = s.scalar(select(Job))
        assert job is not None and job.state is JobState.QUEUED


def _complete(rx, datasets, uid: str) -> Series:
    _send(rx.port, datasets)
    sweep_series(rx.sessions, rx.config.series, now=utcnow() + timedelta(seconds=60))
    return _series(rx, uid)


def test_selection_reasons(start_receiver) -> None:
    rx = start_receiver(
        series={"selection": {**SELECTION, "series_description_exclude": "(?i)mip"}}
    )
    cases = {
        "1.2.6.1": ([ct_slice("1.2.6", "1.2.6.1", i, thickness=1.0) for i in range(6)], "thin"),
        "1.2.6.2": ([ct_slice("1.2.6", "1.2.6.2", i, thickness=8.0) for i in range(6)], "thick"),
        "1.2.6.3": ([ct_slice("1.2.6", "1.2.6.3", i) for i in range(3)], "fewer than the minimum"),
        "1.2.6.4": (
            [ct_slice("1.2.6", "1.2.6.4", 0, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))],
            "LOCALIZER",
        ),
        "1.2.6.5": (
            [
                ct_slice("1.2.6", "1.2.6.5", i, image_type=("DERIVED", "SECONDARY", "AXIAL"))
                for i in range(6)
            ],
            "not ORIGINAL",
        ),
        "1.2.6.6": (
            [ct_slice("1.2.6", "1.2.6.6", i, modality="PT") for i in range(6)],
            "modality PT",
        ),
        "1.2.6.7": (
            [ct_slice("1.2.6", "1.2.6.7", i, description="CTPA MIP") for i in range(6)],
            "series_description_exclude",
        ),
    }
    for uid, (datasets, expected) in cases.items():
        series = _complete(rx, datasets, uid)
        assert series.state is SeriesState.SKIPPED, uid
        assert expected in (series.skip_reason or ""), (uid, series.skip_reason)
    sagittal = [ct_slice("1.2.6", "1.2.6.8", i) for i in range(6)]
    for ds in sagittal:
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    series = _complete(rx, sagittal, "1.2.6.8")
    assert series.state is SeriesState.SKIPPED
    assert "not axial" in (series.skip_reason or "")
    with rx.sessions() as s:
        assert s.scalars(select(Job)).all() == []


def test_late_instance_reopens_and_requeues(start_receiver, db_url: str) -> None:
    rx = start_receiver(db_url, series={"selection": SELECTION})
    first = [ct_slice("1.2.7", "1.2.7.1", i) for i in range(6)]
    assert _complete(rx, first, "1.2.7.1").state is SeriesState.QUEUED
    with rx.sessions() as s:
        job = s.scalar(select(Job))
        assert job is not None
        job.state = JobState.DONE
        job.attempts = 1
        s.commit()
        job_id = job.id
    _send(rx.port, [ct_slice("1.2.7", "1.2.7.1", 6)])
    reopened = _series(rx, "1.2.7.1")
    assert reopened.state is SeriesState.RECEIVING
    assert reopened.instance_count == 7
    sweep_series(rx.sessions, rx.config.series, now=utcnow() + timedelta(seconds=60))
    assert _series(rx, "1.2.7.1").state is SeriesState.QUEUED
    with rx.sessions() as s:
        jobs = s.scalars(select(Job)).all()
        assert [(j.id, j.state, j.attempts) for j in jobs] == [(job_id, JobState.QUEUED, 0)]


def test_skipped_series_reopens_too(start_receiver, tmp_path: Path) -> None:
    rx = start_receiver(series={"selection": SELECTION})
    few = [ct_slice("1.2.8", "1.2.8.1", i) for i in range(3)]
    assert _complete(rx, few, "1.2.8.1").state is SeriesState.SKIPPED
    more = [ct_slice("1.2.8", "1.2.8.1", i) for i in range(3, 6)]
    series = _complete(rx, more, "1.2.8.1")
    assert series.state is SeriesState.QUEUED
    assert series.skip_reason is None
