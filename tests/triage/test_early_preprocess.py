"""Series preprocessed while they wait out ``stable_seconds``: the job starts at the CNN
with the same input, and never with a stale one."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_proc import Daemon
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from support import SELECTION, make_config, open_db, spool_series

from triage.analyse.completeness import sweep_series
from triage.analyse.early import EarlyPreprocessor, file_key
from triage.analyse.worker import Worker
from triage.config import Config
from triage.db import Job, JobState, Result, Series, SeriesState, Study, WorkerHeartbeat
from triage.db.models import utcnow
from triage.states.job import claim_job


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from model.synthetic import StudyParams, generate_study, write_study

    phantom = generate_study(11, StudyParams(n_slices=20, matrix=64, positive=True))
    return list(write_study(phantom, tmp_path_factory.mktemp("study")).series[0].paths)


class Counting:
    """The predictor, counting what it is asked to do."""

    def __init__(self, predictor: Any) -> None:
        self.inner = predictor
        self.bundle, self.device, self.backend = predictor.bundle, "CPU", predictor.backend
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:  # what the heat maps use
        return getattr(self.inner, name)

    def predict(self, files: Sequence[Path]) -> Any:
        self.calls.append("predict")
        return self.inner.predict(files)

    def preprocess(self, files: Sequence[Path]) -> Any:
        self.calls.append("preprocess")
        return self.inner.preprocess(files)

    def predict_preprocessed(self, series: Any) -> Any:
        self.calls.append("predict_preprocessed")
        return self.inner.predict_preprocessed(series)


def _config(tmp_path: Path, **sections: Any) -> Config:
    sections.setdefault("series", {"stable_seconds": 30, "selection": SELECTION})
    return make_config(tmp_path, **sections)


def _spool(config: Config, sessions: sessionmaker[Session], files: list[Path]) -> int:
    """Spool ``files``; the series, quiet for 20 s of its 30, is still receiving. Returns
    its id."""
    series_uid = spool_series(config, sessions, files)
    with sessions() as session:
        series = session.scalars(
            select(Series).where(Series.series_instance_uid == series_uid)
        ).one()
        series.last_received_at = utcnow() - timedelta(seconds=20)
        session.commit()
        assert series.state == SeriesState.RECEIVING
        return series.id


def _complete(config: Config, sessions: sessionmaker[Session]) -> None:
    sweep_series(sessions, config.series, now=utcnow() + timedelta(hours=1))


def _result(sessions: sessionmaker[Session]) -> Result:
    with sessions() as session:
        result = session.scalars(select(Result)).one()
        session.expunge(result)
        return result


def test_a_quiet_series_is_preprocessed_early_and_its_job_starts_at_the_cnn(
    tmp_path: Path, db_url: str, predictor: Any, study_files: list[Path]
) -> None:
    config = _config(tmp_path, database={"url": db_url})
    sessions = open_db(config)
    _spool(config, sessions, study_files)
    counting = Counting(predictor)
    worker = Worker(config, sessions, counting, "host:1")

    assert not worker.run_once()  # nothing is complete yet
    assert worker.prepare_early()
    assert counting.calls == ["preprocess"]
    assert not worker.prepare_early()  # prepared once, as it stands

    _complete(config, sessions)
    assert worker.run_once()
    assert counting.calls == ["preprocess", "predict_preprocessed"]
    result = _result(sessions)
    assert result.timings["early_preprocess"] > 0
    assert result.timings["read"] == result.timings["preprocess"] == 0.0
    # The same input as the job would have made from the files.
    spooled = sorted(config.spool_dir.rglob("*.dcm"))
    assert result.stack_probability == pytest.approx(
        predictor.predict(spooled).stack_probability, abs=1e-6
    )


def test_an_instance_that_arrives_after_preparing_is_not_left_out(
    tmp_path: Path, predictor: Any, study_files: list[Path]
) -> None:
    config = _config(tmp_path)
    sessions = open_db(config)
    _spool(config, sessions, study_files[:-1])
    counting = Counting(predictor)
    worker = Worker(config, sessions, counting, "host:1")
    assert worker.prepare_early()

    _spool(config, sessions, study_files)  # the last slice arrives late
    _complete(config, sessions)
    assert worker.run_once()
    assert counting.calls == ["preprocess", "predict"]
    result = _result(sessions)
    assert "early_preprocess" not in result.timings
    spooled = sorted(config.spool_dir.rglob("*.dcm"))
    assert len(spooled) == len(study_files)
    assert result.stack_probability == pytest.approx(
        predictor.predict(spooled).stack_probability, abs=1e-6
    )


def test_a_replaced_file_changes_the_key(tmp_path: Path, study_files: list[Path]) -> None:
    files = [shutil.copy(f, tmp_path / f.name) for f in study_files[:3]]
    paths = [Path(f) for f in files]
    before = file_key(paths)
    stat = os.stat(paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert file_key(paths) != before
    paths[2].unlink()
    with pytest.raises(FileNotFoundError):
        file_key(paths)


@pytest.mark.parametrize(
    "series",
    [
        {"stable_seconds": 30, "selection": {**SELECTION, "min_slices": 50}},
        {"stable_seconds": 60, "selection": SELECTION},  # quiet for 20 s, not 30
    ],
    ids=["the-selection-rules-skip-it", "not-quiet-for-half-of-stable_seconds"],
)
def test_a_series_not_due_is_not_preprocessed(
    tmp_path: Path, predictor: Any, study_files: list[Path], series: dict[str, Any]
) -> None:
    config = _config(tmp_path, series=series)
    sessions = open_db(config)
    _spool(config, sessions, study_files)
    counting = Counting(predictor)
    assert not Worker(config, sessions, counting).prepare_early()
    assert counting.calls == []


def test_preprocess_early_false_turns_it_off(
    tmp_path: Path, predictor: Any, study_files: list[Path]
) -> None:
    config = _config(tmp_path, worker={"preprocess_early": False})
    sessions = open_db(config)
    _spool(config, sessions, study_files)
    worker = Worker(config, sessions, Counting(predictor))
    assert worker.early is None and not worker.prepare_early()


def test_a_prepared_series_that_is_skipped_or_taken_elsewhere_is_let_go(
    tmp_path: Path, predictor: Any, study_files: list[Path]
) -> None:
    config = _config(tmp_path)
    sessions = open_db(config)
    series_id = _spool(config, sessions, study_files)
    early = EarlyPreprocessor(config, sessions, Counting(predictor))
    assert early.prepare_next() and early.series_ids == [series_id]
    _complete(config, sessions)
    with sessions() as session:  # another worker runs the job
        session.execute(update(Job).values(state=JobState.RUNNING))
        session.commit()
    assert not early.prepare_next()
    assert early.series_ids == []


def test_each_worker_prepares_only_its_share_of_the_series(
    tmp_path: Path, predictor: Any, study_files: list[Path]
) -> None:
    config = _config(tmp_path, worker={"processes": 2})
    sessions = open_db(config)
    series_id = _spool(config, sessions, study_files)
    others = EarlyPreprocessor(config, sessions, Counting(predictor), 1 - series_id % 2, 2)
    assert not others.prepare_next()
    owner = EarlyPreprocessor(config, sessions, Counting(predictor), series_id % 2, 2)
    assert owner.prepare_next() and owner.series_ids == [series_id]


def test_the_claim_takes_the_jobs_of_prepared_series_first(tmp_path: Path, db_url: str) -> None:
    sessions = open_db(db_url)
    with sessions() as session:
        study = Study(study_instance_uid="1.2.3")
        jobs = [
            Job(
                series=Series(
                    study=study, series_instance_uid=f"1.2.3.{i}", state=SeriesState.QUEUED
                ),
                state=JobState.QUEUED,
            )
            for i in range(3)
        ]
        session.add_all(jobs)
        session.commit()
        ids = [(j.id, j.series_id) for j in jobs]
    claim = claim_job(sessions, "host:1", 60, prefer_series=[ids[2][1]])
    assert claim is not None and claim.job_id == ids[2][0]
    claim = claim_job(sessions, "host:1", 60, prefer_series=[ids[2][1]])
    assert claim is not None and claim.job_id == ids[0][0]  # then the oldest


def test_serve_preprocesses_a_series_before_it_is_complete(
    tmp_path: Path, bundle_dir: Path, study_files: list[Path]
) -> None:
    from triage.send import send_files

    daemon = Daemon(
        tmp_path,
        series={"stable_seconds": 6.0, "sweep_interval_seconds": 1.0, "selection": SELECTION},
        worker={"processes": 1, "poll_seconds": 0.2, "heartbeat_seconds": 1},
        model={"bundle": str(bundle_dir)},
    ).start()
    try:
        sessions = open_db(f"sqlite:///{tmp_path / 'var' / 'triage.db'}")
        deadline = time.monotonic() + 120
        while True:  # the worker has loaded its bundle
            with sessions() as session:
                if session.scalar(select(WorkerHeartbeat)) is not None:
                    break
            assert time.monotonic() < deadline, daemon.log_text()[-4000:]
            time.sleep(0.2)
        send_files(study_files, "127.0.0.1", daemon.port, "SCU", "TRIAGE")
        deadline = time.monotonic() + 120
        while not daemon.events("job_done"):
            assert time.monotonic() < deadline, daemon.log_text()[-4000:]
            time.sleep(0.2)
        (prepared,) = daemon.events("series_preprocessed_early")
        assert prepared["instances"] == len(study_files)
        (started,) = daemon.events("job_started")
        assert started["preprocessed_early"] is True
        assert started["study_instance_uid"] == prepared["study_instance_uid"]
    finally:
        daemon.stop()
