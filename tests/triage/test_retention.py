"""Retention: the spool and outbox keep the daemon's copies only while they are needed."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from support import make_config, open_db

from triage.config import Config
from triage.db import (
    Decision,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    Study,
)
from triage.scheduler import build_scheduler
from triage.status import collect_status
from triage.storage.outbox import outbox_dir
from triage.storage.retention import sweep_retention

NOW = datetime(2026, 6, 1, 12, 0, 0)
OLD = NOW - timedelta(days=8)  # past the default 7 days
RECENT = NOW - timedelta(days=2)


def _series(
    sessions: sessionmaker[Session],
    config: Config,
    name: str,
    arrived: datetime,
    state: SeriesState = SeriesState.QUEUED,
    job: JobState | None = JobState.DONE,
    study_uid: str | None = None,
) -> list[Path]:
    """A series of three spooled files, as the receiver and a worker would leave it."""
    study_uid = study_uid or f"1.2.3.{name}"
    series_uid = f"1.2.3.{name}.1"
    folder = config.spool_dir / study_uid / series_uid
    folder.mkdir(parents=True, exist_ok=True)
    with sessions.begin() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        if study is None:
            study = Study(
                study_instance_uid=study_uid, first_received_at=arrived, last_received_at=arrived
            )
        series = Series(
            study=study,
            series_instance_uid=series_uid,
            modality="CT",
            state=state,
            first_received_at=arrived,
            last_received_at=arrived,
        )
        session.add(series)
        files = []
        for i in range(3):
            path = folder / f"{series_uid}.{i}.dcm"
            path.write_bytes(b"x" * 100)
            files.append(path)
            session.add(
                Instance(
                    series=series,
                    sop_instance_uid=f"{series_uid}.{i}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    file_path=str(path.relative_to(config.spool_dir)),
                    file_size=100,
                    received_at=arrived,
                )
            )
        if job is not None:
            session.add(Job(series=series, state=job))
    return files


def _missing(sessions: sessionmaker[Session], files: list[Path]) -> list[bool]:
    with sessions() as session:
        return [
            session.scalars(
                select(Instance.missing).where(Instance.file_path.endswith(f.name))
            ).one()
            for f in files
        ]


def test_finished_series_past_the_retention_lose_their_images_and_keep_their_rows(
    tmp_path: Path, db_url: str
) -> None:
    config = make_config(tmp_path, db_url)
    sessions = open_db(config)
    done = _series(sessions, config, "10", OLD, job=JobState.DONE)
    failed = _series(sessions, config, "11", OLD, job=JobState.FAILED)
    skipped = _series(sessions, config, "12", OLD, state=SeriesState.SKIPPED, job=None)
    recent = _series(sessions, config, "13", RECENT, job=JobState.DONE)
    queued = _series(sessions, config, "14", OLD, job=JobState.QUEUED)
    running = _series(sessions, config, "15", OLD, job=JobState.RUNNING)
    reopened = _series(sessions, config, "16", OLD, state=SeriesState.RECEIVING)

    report = sweep_retention(sessions, config, now=NOW)

    assert (report.series, report.instances, report.bytes) == (3, 9, 900)
    for files in (done, failed, skipped):
        assert not any(f.exists() for f in files)
        assert _missing(sessions, files) == [True, True, True]
        # The series' and the study's folders went with their last file.
        assert not files[0].parent.exists() and not files[0].parent.parent.exists()
    for files in (recent, queued, running, reopened):
        assert all(f.exists() for f in files)
        assert _missing(sessions, files) == [False, False, False]
    # `triage status` says the images were let go, not that they are missing.
    status = collect_status(sessions)
    by_uid = {s["series_instance_uid"]: s for st in status["studies"] for s in st["series"]}
    assert by_uid["1.2.3.10.1"]["spool_released_at"] is not None
    assert by_uid["1.2.3.10.1"]["missing_instances"] == 0
    assert by_uid["1.2.3.13.1"]["spool_released_at"] is None
    assert status["counts"]["instances_missing"] == 0
    # Nothing is left to do a second time.
    assert sweep_retention(sessions, config, now=NOW).series == 0


def test_a_study_folder_stays_while_another_series_of_it_is_kept(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    sessions = open_db(config)
    old = _series(sessions, config, "20", OLD, study_uid="1.2.3.20")
    kept = _series(sessions, config, "21", OLD, job=JobState.QUEUED, study_uid="1.2.3.20")
    sweep_retention(sessions, config, now=NOW)
    assert not old[0].parent.exists()
    assert all(f.exists() for f in kept)


def test_null_keeps_everything(tmp_path: Path) -> None:
    config = make_config(tmp_path, retention={"spool_days": None, "outbox_days": None})
    sessions = open_db(config)
    files = _series(sessions, config, "30", OLD)
    report = sweep_retention(sessions, config, now=NOW)
    assert (report.series, report.outboxes) == (0, 0)
    assert all(f.exists() for f in files)


def _result(
    sessions: sessionmaker[Session], config: Config, name: str, made: datetime, *states: str
) -> Path:
    _series(sessions, config, name, made)
    with sessions.begin() as session:
        series = session.scalars(
            select(Series).where(Series.series_instance_uid == f"1.2.3.{name}.1")
        ).one()
        job = session.scalars(select(Job).where(Job.series_id == series.id)).one()
        result = Result(
            job_id=job.id, series_id=series.id, decision=Decision.ABSENT, created_at=made
        )
        session.add(result)
        session.flush()
        for i, state in enumerate(states):
            session.add(Delivery(result=result, destination=f"d{i}", state=DeliveryState(state)))
        folder = outbox_dir(config.data_dir, result.id)
    folder.mkdir(parents=True)
    (folder / "sr.dcm").write_bytes(b"sr")
    return folder


def test_reports_go_once_every_delivery_was_sent_and_the_retention_passed(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, retention={"spool_days": None, "outbox_days": 30})
    sessions = open_db(config)
    long_ago = NOW - timedelta(days=31)
    sent = _result(sessions, config, "40", long_ago, "sent", "sent")
    dead = _result(sessions, config, "41", long_ago, "sent", "dead")
    retrying = _result(sessions, config, "42", long_ago, "retrying")
    young = _result(sessions, config, "43", NOW - timedelta(days=29), "sent")

    assert sweep_retention(sessions, config, now=NOW).outboxes == 1
    assert not sent.exists()
    # A dead delivery may be re-queued with `triage retry`, which resends the same files.
    assert dead.exists() and retrying.exists() and young.exists()


def test_the_daemon_schedules_the_retention_sweep(tmp_path: Path) -> None:
    config = make_config(tmp_path, retention={"sweep_interval_seconds": 600})
    scheduler = build_scheduler(open_db(config), config)
    job = scheduler.get_job("retention")
    assert job is not None and job.trigger.interval == timedelta(seconds=600)
