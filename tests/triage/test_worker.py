"""Inference workers: exclusive claims, leases, results with their reports and deliveries,
undetermined series, retries, thresholds and their reload, and ``triage serve`` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from daemon_proc import Daemon
from dicom_factory import write_series
from pydicom import dcmread
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker
from support import SELECTION, make_config, open_db, spool_series

from triage.analyse import reports as report_building
from triage.analyse import store
from triage.analyse.completeness import sweep_series
from triage.analyse.decide import flag_slices
from triage.analyse.worker import Worker
from triage.config import Config
from triage.db import (
    AuditEvent,
    Delivery,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    Study,
    WorkerHeartbeat,
    create_db_engine,
    session_factory,
)
from triage.db.models import utcnow
from triage.states.job import claim_job, release_worker_jobs, requeue_expired_leases
from triage.storage.outbox import OutboxRecovery
from triage.storage.outbox import recover as recover_outbox
from triage.storage.reconcile import reconcile

DESTINATIONS = [
    {"name": "pacs", "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 11113},
    {"name": "ris", "type": "hl7", "host": "127.0.0.1", "port": 2575},
]


# -- fixtures --------------------------------------------------------------------------


def _synthetic_series(seed: int, folder: Path) -> list[Path]:
    """A synthetic positive CTPA series (20 slices of 64 x 64)."""
    from model.synthetic import StudyParams, generate_study, write_study

    phantom = generate_study(seed, StudyParams(n_slices=20, matrix=64, positive=True))
    return list(write_study(phantom, folder).series[0].paths)


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _synthetic_series(7, tmp_path_factory.mktemp("study"))


def _spool_and_queue(config: Config, sessions: sessionmaker[Session], files: list[Path]) -> int:
    """Put ``files`` in the spool as the receiver would, complete the series, return its job."""
    series_uid = spool_series(config, sessions, files)
    sweep_series(sessions, config.series, now=utcnow() + timedelta(hours=1))
    with sessions() as session:
        job = session.scalar(
            select(Job).join(Series).where(Series.series_instance_uid == series_uid)
        )
        assert job is not None and job.state == JobState.QUEUED
        return job.id


def _config(tmp_path: Path, db_url: str | None = None, **sections: Any) -> Config:
    sections.setdefault("series", {"selection": SELECTION})
    sections.setdefault("destinations", DESTINATIONS)
    return make_config(tmp_path, db_url, **sections)


def _job(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _results(sessions: sessionmaker[Session], job_id: int) -> list[Result]:
    with sessions() as session:
        rows = list(session.scalars(select(Result).where(Result.job_id == job_id)))
        for row in rows:
            session.expunge(row)
        return rows


def _deliveries(sessions: sessionmaker[Session], result_id: int) -> list[str]:
    with sessions() as session:
        return sorted(
            session.scalars(select(Delivery.destination).where(Delivery.result_id == result_id))
        )


def _make_jobs(sessions: sessionmaker[Session], n: int) -> list[int]:
    """``n`` queued jobs on queued series, without any files (claims only)."""
    with sessions() as session:
        study = Study(study_instance_uid="1.2.3")
        session.add(study)
        jobs = []
        for i in range(n):
            series = Series(study=study, series_instance_uid=f"1.2.3.{i}", state=SeriesState.QUEUED)
            job = Job(series=series, state=JobState.QUEUED)
            session.add_all([series, job])
            jobs.append(job)
        session.commit()
        return [j.id for j in jobs]


# -- claims and leases -----------------------------------------------------------------


def test_concurrent_workers_claim_each_job_exactly_once(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url)
    ids = _make_jobs(open_db(config), 40)
    claimed: list[list[int]] = [[], [], []]

    def claim_all(slot: int) -> None:
        # Its own engine, as a separate worker process would have.
        sessions = session_factory(create_db_engine(config.database_url))
        while (claim := claim_job(sessions, f"host:{slot}", 60)) is not None:
            claimed[slot].append(claim.job_id)

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = [j for per in claimed for j in per]
    assert sorted(everything) == sorted(ids)  # none twice, none left behind
    sessions = open_db(config)
    for slot, per in enumerate(claimed):
        for job_id in per:
            job = _job(sessions, job_id)
            assert (job.state, job.worker_id, job.attempts) == (
                JobState.RUNNING,
                f"host:{slot}",
                1,
            )
            assert job.lease_expires_at is not None and job.lease_expires_at > utcnow()


def test_a_reopened_series_is_not_claimed(tmp_path: Path) -> None:
    sessions = open_db(make_config(tmp_path))
    (job_id,) = _make_jobs(sessions, 1)
    with sessions() as session:
        session.execute(update(Series).values(state=SeriesState.RECEIVING))
        session.commit()
    assert claim_job(sessions, "w", 60) is None
    assert _job(sessions, job_id).state == JobState.QUEUED


def test_expired_lease_requeues_the_job_of_a_dead_worker(tmp_path: Path, db_url: str) -> None:
    sessions = open_db(make_config(tmp_path, db_url))
    (job_id,) = _make_jobs(sessions, 1)
    assert claim_job(sessions, "dead-worker:1", 60) is not None
    # A live lease is left alone.
    assert requeue_expired_leases(sessions, max_attempts=2) == 0
    with sessions() as session:
        session.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    assert requeue_expired_leases(sessions, max_attempts=2) == 1
    job = _job(sessions, job_id)
    assert (job.state, job.worker_id, job.attempts) == (JobState.QUEUED, None, 1)
    assert "lease expired" in (job.error or "")

    # The second death uses up max_attempts: failed, not queued again forever.
    claim = claim_job(sessions, "dead-worker:2", 60)
    assert claim is not None and claim.attempts == 2
    assert requeue_expired_leases(sessions, 2, now=utcnow() + timedelta(seconds=61)) == 1
    assert _job(sessions, job_id).state == JobState.FAILED
    assert claim_job(sessions, "w", 60) is None


def test_jobs_of_a_dead_worker_are_released_and_a_shutdown_costs_no_attempt(
    tmp_path: Path,
) -> None:
    sessions = open_db(make_config(tmp_path))
    crashed, stopped = _make_jobs(sessions, 2)
    assert claim_job(sessions, "host:10", 60) is not None
    assert claim_job(sessions, "host:11", 60) is not None
    # Died on its own: the attempt counts (the series may be what kills workers).
    assert release_worker_jobs(sessions, "host:10", max_attempts=1) == 1
    assert _job(sessions, crashed).state == JobState.FAILED
    # Killed by us at shutdown: queued again with its attempt given back.
    assert release_worker_jobs(sessions, "host:11", 1, count_attempt=False) == 1
    job = _job(sessions, stopped)
    assert (job.state, job.attempts, job.worker_id) == (JobState.QUEUED, 0, None)


def test_the_daemon_modules_do_not_import_tensorflow() -> None:
    # The receiver must start in about a second and survive a crash in TensorFlow.
    code = (
        "import sys, triage.cli, triage.daemon, triage.analyse.processes\n"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# -- processing ------------------------------------------------------------------------


def test_flagged_slices_are_the_most_probable_at_or_above_threshold_capped() -> None:
    probabilities = {"1.1": 0.2, "1.2": 0.9, "1.3": 0.5, "1.4": 0.7, "1.5": 0.49}
    assert flag_slices(probabilities, 0.5, 10) == ["1.2", "1.4", "1.3"]
    assert flag_slices(probabilities, 0.5, 2) == ["1.2", "1.4"]
    assert flag_slices(probabilities, 0.95, 2) == []


def test_positive_job_stores_result_reports_and_a_delivery_per_destination(
    tmp_path: Path, db_url: str, predictor: Any, study_files: list[Path]
) -> None:
    config = _config(
        tmp_path, db_url, thresholds={"stack": 0.0, "slice": 0.0, "max_flagged_slices": 2}
    )
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)

    assert Worker(config, sessions, predictor, "host:1").run_once()

    job = _job(sessions, job_id)
    assert job.state == JobState.DONE and job.worker_id == "host:1" and job.attempts == 1
    (result,) = _results(sessions, job_id)
    assert result.decision.value == "present"
    assert 0.0 <= (result.stack_probability or -1) <= 1.0
    slices = result.slice_probabilities
    source_sops = {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in study_files}
    assert slices and set(slices) <= source_sops
    flagged = result.flagged_sop_instance_uids
    assert len(flagged) == min(2, len(slices))  # every slice passes 0.0; capped at 2
    assert [slices[u] for u in flagged] == sorted((slices[u] for u in flagged), reverse=True)
    assert (result.threshold_stack, result.threshold_slice) == (0.0, 0.0)
    assert result.threshold_source == "config"
    assert result.bundle_sha256 == predictor.bundle.manifest_sha256
    assert result.bundle_version == "0" and result.bundle_name == predictor.bundle.name
    assert {"read", "preprocess", "cnn", "sequence", "total", "report"} <= set(result.timings)
    # Positives reach every destination: the PACS gets SR and KOS, the RIS its ORU.
    assert _deliveries(sessions, result.id) == ["pacs", "ris"]

    outbox = config.data_dir / "outbox" / str(result.id)
    sr = dcmread(outbox / "sr.dcm")
    source = dcmread(study_files[0], stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.SOPInstanceUID == result.sr_sop_instance_uid
    kos = dcmread(outbox / "kos.dcm")
    assert kos.SOPInstanceUID == result.kos_sop_instance_uid
    assert kos.StudyInstanceUID == source.StudyInstanceUID

    # Done is done: nothing left to claim.
    assert not Worker(config, sessions, predictor, "host:1").run_once()


def test_key_images_of_the_top_flagged_slices_are_written_after_the_result(
    tmp_path: Path, db_url: str, predictor: Any, study_files: list[Path], monkeypatch: Any
) -> None:
    from PIL import Image

    from triage.analyse.key_images import LUNG_WINDOW, PE_WINDOW, windowed
    from triage.report.secondary_capture import slice_hu

    config = _config(
        tmp_path,
        db_url,
        thresholds={"stack": 0.0, "slice": 0.0, "max_flagged_slices": 5},
        worker={"heatmap_slices": 3},
    )
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)

    def not_again(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the heat maps use the model input the prediction kept")

    monkeypatch.setattr("model.preprocess.preprocess_series", not_again)
    assert Worker(config, sessions, predictor, "host:1").run_once()
    (result,) = _results(sessions, job_id)
    folder = config.data_dir / "outbox" / str(result.id) / "key_images"
    index = json.loads((folder / "key_images.json").read_text())
    assert not (folder.parent / "key_images.partial").exists()

    # The three most probable flagged slices, most probable first.
    slices = result.slice_probabilities
    assert [i["sop_instance_uid"] for i in index["images"]] == (
        result.flagged_sop_instance_uids[:3]
    )
    assert index["threshold"] == 0.0
    assert 0 < index["seconds"]["heatmaps"] <= index["seconds"]["total"]
    sources = {}
    for path in study_files:
        header = dcmread(path)
        sources[header.SOPInstanceUID] = header
    for entry in index["images"]:
        source = sources[entry["sop_instance_uid"]]
        assert entry["probability"] == slices[entry["sop_instance_uid"]]
        assert entry["instance_number"] == source.InstanceNumber
        hu = slice_hu(source)
        pe = Image.open(folder / entry["pe_window"])
        lung = Image.open(folder / entry["lung_window"])
        heat = Image.open(folder / entry["heatmap"])
        assert (pe.mode, lung.mode, heat.mode) == ("L", "L", "RGBA")
        assert pe.size == lung.size == heat.size == (source.Columns, source.Rows)
        # The slice itself, at each window: not another slice, not the model input.
        assert (np.asarray(pe) == windowed(hu, *PE_WINDOW)).all()
        assert (np.asarray(lung) == windowed(hu, *LUNG_WINDOW)).all()
        alpha = np.asarray(heat)[..., 3]
        assert alpha.max() == 255 and alpha.min() < 255  # a peak, and somewhere it did not look
    # The curve: every slice with its probability, along the scan in mm.
    curve = index["curve"]
    assert {p["sop_instance_uid"] for p in curve} == set(slices)
    assert all(p["probability"] == slices[p["sop_instance_uid"]] for p in curve)
    positions = [p["position_mm"] for p in curve]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    by_uid = {p["sop_instance_uid"]: p["position_mm"] for p in curve}
    assert all(by_uid[i["sop_instance_uid"]] == i["position_mm"] for i in index["images"])

    # The study view reads what the worker wrote: every image, its caption and the curve.
    from triage.web.study import key_image_path, read_key_images

    images, view_curve = read_key_images(config.data_dir, result.id)
    assert [i.sop_instance_uid for i in images] == [i["sop_instance_uid"] for i in index["images"]]
    for image, entry in zip(images, index["images"], strict=True):
        assert (image.probability, image.instance_number) == (
            entry["probability"],
            entry["instance_number"],
        )
        for name in (image.image, image.lung, image.overlay):
            assert name is not None and key_image_path(config.data_dir, result.id, name)
    assert view_curve is not None and len(view_curve.positions_mm) == len(curve)


def test_no_heat_maps_with_heatmap_slices_0_and_a_failure_costs_the_result_nothing(
    tmp_path: Path, db_url: str, predictor: Any, study_files: list[Path], monkeypatch: Any
) -> None:
    from triage.analyse import key_images

    thresholds: dict[str, float] = {"stack": 0.0, "slice": 0.0}
    config = _config(tmp_path / "a", db_url, thresholds=thresholds, worker={"heatmap_slices": 0})
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)
    assert Worker(config, sessions, predictor, "host:1").run_once()
    (result,) = _results(sessions, job_id)
    folder = config.data_dir / "outbox" / str(result.id) / "key_images"
    index = json.loads((folder / "key_images.json").read_text())
    assert index["images"] == [] and len(index["curve"]) == len(result.slice_probabilities)
    assert sorted(p.name for p in folder.iterdir()) == ["key_images.json"]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of GPU memory")

    monkeypatch.setattr(key_images, "explain", broken)
    config = _config(tmp_path / "b", None, thresholds=thresholds)  # its own database
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)
    assert Worker(config, sessions, predictor, "host:1").run_once()
    assert _job(sessions, job_id).state == JobState.DONE
    (result,) = _results(sessions, job_id)
    assert _deliveries(sessions, result.id) == ["pacs", "ris"]
    outbox = config.data_dir / "outbox" / str(result.id)
    assert sorted(p.name for p in outbox.iterdir()) == ["kos.dcm", "sr.dcm"]
    monkeypatch.undo()

    # Never more heat maps than flagged slices (8 asked for, 1 flagged).
    thresholds["max_flagged_slices"] = 1
    config = _config(tmp_path / "c", None, thresholds=thresholds)
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)
    assert Worker(config, sessions, predictor, "host:1").run_once()
    (result,) = _results(sessions, job_id)
    folder = config.data_dir / "outbox" / str(result.id) / "key_images"
    index = json.loads((folder / "key_images.json").read_text())
    assert [i["sop_instance_uid"] for i in index["images"]] == result.flagged_sop_instance_uids
    assert len(index["images"]) == 1


def test_a_pacs_that_asks_for_it_gets_the_secondary_capture_series_with_sr_and_kos(
    tmp_path: Path, db_url: str, predictor: Any, study_files: list[Path], monkeypatch: Any
) -> None:
    from dispatch_helpers import Received, start_store_scp
    from pydicom.uid import (
        Comprehensive3DSRStorage,
        KeyObjectSelectionDocumentStorage,
        SecondaryCaptureImageStorage,
    )

    from triage.analyse import worker as worker_module
    from triage.analyse.key_images import make_key_images
    from triage.dispatch import dispatch_due

    with_sc, without_sc = Received(), Received()
    scp_with = start_store_scp(0, with_sc, extra_sop_classes=(SecondaryCaptureImageStorage,))
    scp_without = start_store_scp(0, without_sc, extra_sop_classes=(SecondaryCaptureImageStorage,))
    try:
        destinations = [
            {
                "name": "viewer",
                "type": "dicom",
                "ae_title": "PACS",
                "host": "127.0.0.1",
                "port": scp_with.server_address[1],
                "send_secondary_capture": True,
            },
            {
                "name": "pacs",
                "type": "dicom",
                "ae_title": "PACS",
                "host": "127.0.0.1",
                "port": scp_without.server_address[1],
            },
        ]
        config = _config(
            tmp_path,
            db_url,
            destinations=destinations,
            thresholds={"stack": 0.0, "slice": 0.0, "max_flagged_slices": 5},
            worker={"heatmap_slices": 2},
        )
        sessions = open_db(config)
        job_id = _spool_and_queue(config, sessions, study_files)
        while_making: dict[str, bool] = {}

        def watched(*args: Any, **kwargs: Any) -> Any:
            # While the heat maps are made, the result and the other PACS's delivery are
            # committed and due; this one's waits for the series.
            with sessions() as session:
                for row in session.scalars(select(Delivery)):
                    while_making[row.destination] = row.next_attempt_at <= utcnow()
            return make_key_images(*args, **kwargs)

        monkeypatch.setattr(worker_module, "make_key_images", watched)
        assert Worker(config, sessions, predictor, "host:1").run_once()
        assert while_making == {"viewer": False, "pacs": True}
        (result,) = _results(sessions, job_id)
        # The worker let the held delivery go once the series was written.
        with sessions() as session:
            due = {d.destination: d.next_attempt_at for d in session.scalars(select(Delivery))}
        assert max(due.values()) <= utcnow()
        assert dispatch_due(sessions, config) == 2
    finally:
        scp_with.shutdown()
        scp_without.shutdown()

    index = json.loads(
        (config.data_dir / "outbox" / str(result.id) / "key_images" / "key_images.json").read_text()
    )
    sc_uids = [e["sop_instance_uid"] for e in index["secondary_capture"]]
    assert len(sc_uids) == 3  # the curve page and the two key slices
    reports = [
        (Comprehensive3DSRStorage, result.sr_sop_instance_uid),
        (KeyObjectSelectionDocumentStorage, result.kos_sop_instance_uid),
    ]
    assert sorted(with_sc.stored) == sorted(
        reports + [(SecondaryCaptureImageStorage, uid) for uid in sc_uids]
    )
    assert sorted(without_sc.stored) == sorted(reports)
    source = dcmread(study_files[0], stop_before_pixels=True)
    sc = dcmread(config.data_dir / "outbox" / str(result.id) / "key_images" / "sc_02.dcm")
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID not in (
        source.SeriesInstanceUID,
        dcmread(config.data_dir / "outbox" / str(result.id) / "sr.dcm").SeriesInstanceUID,
    )
    assert "NOT FOR DIAGNOSTIC USE" in sc.SeriesDescription


def test_the_report_uses_the_headers_the_predictor_read(
    tmp_path: Path, predictor: Any, study_files: list[Path]
) -> None:
    config = _config(tmp_path, thresholds={"stack": 0.0, "slice": 0.0})
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)

    class ReadOnce:
        bundle = predictor.bundle
        device = "CPU"
        backend = "tensorflow"

        def predict(self, files: list[Path]) -> Any:
            prediction = predictor.predict(files)
            # Reading the series once is enough: the worker must not open the files again.
            for path in files:
                path.unlink()
            return prediction

    assert Worker(config, sessions, ReadOnce()).run_once()
    (result,) = _results(sessions, job_id)
    sr = dcmread(config.data_dir / "outbox" / str(result.id) / "sr.dcm")
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    (series,) = evidence.ReferencedSeriesSequence
    cited = {str(item.ReferencedSOPInstanceUID) for item in series.ReferencedSOPSequence}
    source_sops = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in study_files}
    assert cited == source_sops


def test_the_reports_are_built_while_others_can_write_to_theopen_db(
    tmp_path: Path, predictor: Any, study_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # On SQLite a transaction holds the one write lock, which the receiver needs for each
    # instance it acknowledges: the worker must not hold it while it builds the SR.
    config = _config(tmp_path, thresholds={"stack": 0.0, "slice": 0.0})
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)
    impatient = create_db_engine(config.database_url, busy_timeout_ms=0)
    writes = []
    build_sr = report_building.build_sr

    def build_sr_while_another_writes(*args: Any, **kwargs: Any) -> Any:
        with impatient.begin() as connection:  # "database is locked" if the lock is held
            writes.append(connection.execute(text("UPDATE studies SET study_date = '20260101'")))
        return build_sr(*args, **kwargs)

    monkeypatch.setattr(report_building, "build_sr", build_sr_while_another_writes)
    assert Worker(config, sessions, predictor).run_once()
    assert len(writes) == 1
    assert _job(sessions, job_id).state == JobState.DONE
    (result,) = _results(sessions, job_id)
    assert (config.data_dir / "outbox" / str(result.id) / "sr.dcm").is_file()


def test_negative_job_goes_to_the_pacs_only_and_the_bundle_slice_threshold_applies(
    tmp_path: Path, predictor: Any, study_files: list[Path]
) -> None:
    # No probability reaches 1.0 from a sigmoid in float32 on this series: absent.
    config = _config(tmp_path, thresholds={"stack": 1.0})
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)
    assert Worker(config, sessions, predictor).run_once()
    (result,) = _results(sessions, job_id)
    assert result.decision.value == "absent"
    assert result.threshold_stack == 1.0
    assert result.threshold_slice == 0.5  # the bundle's ("untrained default")
    assert result.threshold_source == "stack=config,slice=bundle"
    assert result.kos_sop_instance_uid is None and result.sr_sop_instance_uid
    assert _deliveries(sessions, result.id) == ["pacs"]
    outbox = config.data_dir / "outbox" / str(result.id)
    assert (outbox / "sr.dcm").exists() and not (outbox / "kos.dcm").exists()


def test_bundle_thresholds_apply_when_the_yaml_leaves_them_null(
    tmp_path: Path, predictor: Any, study_files: list[Path]
) -> None:
    config = _config(tmp_path)
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)
    assert Worker(config, sessions, predictor).run_once()
    (result,) = _results(sessions, job_id)
    assert (result.threshold_stack, result.threshold_slice) == (0.5, 0.5)
    assert result.threshold_source == "bundle"
    assert result.stack_probability is not None
    expected = "present" if result.stack_probability >= 0.5 else "absent"
    assert result.decision.value == expected


def test_too_few_slices_is_undetermined_with_its_reason_and_not_retried(
    tmp_path: Path, db_url: str, predictor: Any
) -> None:
    # Selection lets 4 slices through; the bundle needs at least 10.
    config = _config(tmp_path, db_url, thresholds={"stack": 0.0})
    sessions = open_db(config)
    _, _, files = write_series(tmp_path / "short", 4)
    job_id = _spool_and_queue(config, sessions, files)
    worker = Worker(config, sessions, predictor)
    assert worker.run_once()
    job = _job(sessions, job_id)
    assert job.state == JobState.UNDETERMINED and job.attempts == 1
    assert "4 slices" in (job.reason or "")
    (result,) = _results(sessions, job_id)
    assert result.decision.value == "undetermined" and result.stack_probability is None
    assert "4 slices" in (result.reason or "")
    # The PACS still learns that no decision was made; the RIS is not bothered.
    assert _deliveries(sessions, result.id) == ["pacs"]
    sr = dcmread(config.data_dir / "outbox" / str(result.id) / "sr.dcm")
    texts = [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
    assert any("No decision" in t and "4 slices" in t for t in texts), texts
    assert not worker.run_once()


def test_an_undetermined_reason_names_the_file_without_the_hosts_folders(
    tmp_path: Path, predictor: Any
) -> None:
    config = _config(tmp_path)
    sessions = open_db(config)
    study_uid, series_uid, files = write_series(tmp_path / "broken", 12)
    broken = dcmread(files[5])
    del broken.PixelData
    broken.save_as(files[5], enforce_file_format=True)
    job_id = _spool_and_queue(config, sessions, files)
    assert Worker(config, sessions, predictor).run_once()
    (result,) = _results(sessions, job_id)
    assert result.decision.value == "undetermined"
    reason = result.reason or ""
    assert f"{study_uid}/{series_uid}/{broken.SOPInstanceUID}.dcm has no pixel data" in reason
    assert str(tmp_path) not in reason


def test_a_failing_job_is_retried_up_to_max_attempts_then_failed(
    tmp_path: Path, db_url: str, predictor: Any, study_files: list[Path]
) -> None:
    config = _config(tmp_path, db_url, worker={"max_attempts": 2})
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)

    class Broken:
        bundle = predictor.bundle
        device = "CPU"
        backend = "tensorflow"
        calls = 0

        def predict(self, files: list[Path]) -> Any:
            Broken.calls += 1
            raise RuntimeError("out of GPU memory")

    worker = Worker(config, sessions, Broken())
    assert worker.run_once()
    job = _job(sessions, job_id)
    assert (job.state, job.attempts) == (JobState.QUEUED, 1)
    # The error by class and place: a library's message may quote a header value.
    assert (job.error or "").startswith("RuntimeError in ")
    assert worker.run_once()
    job = _job(sessions, job_id)
    assert (job.state, job.attempts) == (JobState.FAILED, 2)
    assert (job.error or "").startswith("RuntimeError in ")
    assert not worker.run_once()
    assert Broken.calls == 2
    assert _results(sessions, job_id) == []


def test_a_series_reopened_during_analysis_gets_no_stale_result(
    tmp_path: Path, predictor: Any, study_files: list[Path]
) -> None:
    config = _config(tmp_path)
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)

    class Reopening:
        bundle = predictor.bundle
        device = "CPU"
        backend = "tensorflow"

        def predict(self, files: list[Path]) -> Any:
            prediction = predictor.predict(files)
            # A late instance arrives while the model runs.
            with sessions() as session:
                session.execute(update(Series).values(state=SeriesState.RECEIVING))
                session.commit()
            return prediction

    assert Worker(config, sessions, Reopening()).run_once()
    job = _job(sessions, job_id)
    assert job.state == JobState.QUEUED and job.attempts == 0
    assert _results(sessions, job_id) == []
    assert not (config.data_dir / "outbox").exists()


class _Crash(BaseException):
    """Stands for the process dying: no handler of the worker's catches it."""


def _run_dying_in(monkeypatch: pytest.MonkeyPatch, worker: Worker, owner: Any, name: str) -> None:
    """Run one job with ``owner.name`` killing the process (:class:`_Crash`), then restore it."""

    def crash(*args: Any) -> bool:
        raise _Crash

    monkeypatch.setattr(owner, name, crash)
    with pytest.raises(_Crash):
        worker.run_once()
    monkeypatch.undo()


def _age(folder: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(folder, (then, then))


def test_a_crash_before_the_commit_leaves_a_partial_outbox_that_start_up_removes(
    tmp_path: Path,
    db_url: str,
    predictor: Any,
    study_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _config(tmp_path, db_url, thresholds={"stack": 0.0, "slice": 0.0})
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)

    _run_dying_in(monkeypatch, Worker(config, sessions, predictor), store.job_state, "finish_done")
    assert _results(sessions, job_id) == []
    outbox = config.data_dir / "outbox"
    (left,) = list(outbox.iterdir())
    assert left.name.endswith(".partial") and (left / "sr.dcm").is_file()
    # A worker on another host may be between its write and its commit: a young
    # folder without a row stays; one older than a lease goes.
    lease = config.worker.lease_seconds
    assert recover_outbox(sessions, config.data_dir, lease) == OutboxRecovery(0, 0)
    assert left.is_dir()
    _age(left, lease + 1)
    assert recover_outbox(sessions, config.data_dir, lease) == OutboxRecovery(0, 1)
    assert list(outbox.iterdir()) == []
    # The job was left running by the "dead" worker; start-up gives it back, and the
    # next attempt stores the result with its files in place.
    reconcile(sessions, config.spool_dir)
    assert Worker(config, sessions, predictor).run_once()
    (result,) = _results(sessions, job_id)
    assert sorted(p.name for p in outbox.iterdir()) == [str(result.id)]
    assert dcmread(outbox / str(result.id) / "sr.dcm").SOPInstanceUID == result.sr_sop_instance_uid


def test_a_crash_after_the_commit_leaves_a_partial_outbox_that_start_up_publishes(
    tmp_path: Path,
    db_url: str,
    predictor: Any,
    study_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _config(tmp_path, db_url, thresholds={"stack": 0.0, "slice": 0.0})
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)

    _run_dying_in(monkeypatch, Worker(config, sessions, predictor), store, "publish")
    (result,) = _results(sessions, job_id)
    assert _job(sessions, job_id).state == JobState.DONE
    outbox = config.data_dir / "outbox"
    assert [p.name for p in outbox.iterdir()] == [f"{result.id}.partial"]
    # The row exists, so the commit happened: the folder is renamed whatever its age.
    assert recover_outbox(sessions, config.data_dir, 3600) == OutboxRecovery(1, 0)
    assert [p.name for p in outbox.iterdir()] == [str(result.id)]
    folder = outbox / str(result.id)
    assert dcmread(folder / "sr.dcm").SOPInstanceUID == result.sr_sop_instance_uid
    assert dcmread(folder / "kos.dcm").SOPInstanceUID == result.kos_sop_instance_uid
    assert recover_outbox(sessions, config.data_dir, 0) == OutboxRecovery(0, 0)


def test_an_outbox_folder_no_result_owns_is_removed_once_it_is_old(
    tmp_path: Path, db_url: str
) -> None:
    # What the previous version left when it crashed between writing and committing.
    config = _config(tmp_path, db_url)
    sessions = open_db(config)
    orphan = config.data_dir / "outbox" / "41"
    orphan.mkdir(parents=True)
    (orphan / "sr.dcm").write_bytes(b"not committed")
    assert recover_outbox(sessions, config.data_dir, 60) == OutboxRecovery(0, 0)
    _age(orphan, 61)
    assert recover_outbox(sessions, config.data_dir, 60) == OutboxRecovery(0, 1)
    assert not orphan.exists()


def test_key_images_a_crash_left_unfinished_are_removed_once_old(
    tmp_path: Path, db_url: str, predictor: Any, study_files: list[Path]
) -> None:
    config = _config(tmp_path, db_url, worker={"heatmap_slices": 0})
    sessions = open_db(config)
    job_id = _spool_and_queue(config, sessions, study_files)
    assert Worker(config, sessions, predictor, "host:1").run_once()
    (result,) = _results(sessions, job_id)
    unfinished = config.data_dir / "outbox" / str(result.id) / "key_images.partial"
    unfinished.mkdir()
    (unfinished / "key_01_pe.png").write_bytes(b"half")
    assert recover_outbox(sessions, config.data_dir, 60) == OutboxRecovery(0, 0)
    _age(unfinished, 61)
    assert recover_outbox(sessions, config.data_dir, 60) == OutboxRecovery(0, 1)
    assert not unfinished.exists()
    assert (unfinished.parent / "key_images" / "key_images.json").is_file()
    assert (unfinished.parent / "sr.dcm").is_file()


# -- triage serve, reload --------------------------------------------------------------


def _status(daemon: Daemon) -> dict[str, Any]:
    out = daemon.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def _series_status(daemon: Daemon, series_uid: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for study in _status(daemon)["studies"]:
            for series in study["series"]:
                if series["series_instance_uid"] == series_uid and series["result"]:
                    return dict(series)
        assert time.monotonic() < deadline, daemon.log_text()[-4000:]
        time.sleep(0.5)


def _send(daemon: Daemon, files: list[Path]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "triage.cli", "send", "--host", "127.0.0.1", "--port"]
        + [str(daemon.port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


@pytest.fixture
def serving(tmp_path: Path, bundle_dir: Path) -> Iterator[Daemon]:
    daemon = Daemon(
        tmp_path,
        series={"stable_seconds": 0.5, "sweep_interval_seconds": 0.2, "selection": SELECTION},
        worker={"processes": 1, "poll_seconds": 0.2, "heartbeat_seconds": 1},
        model={"bundle": str(bundle_dir)},
        thresholds={"stack": 1.0},
        destinations=DESTINATIONS,
    ).start()
    yield daemon
    daemon.stop()


def _rewrite_thresholds(daemon: Daemon, thresholds: Any) -> None:
    data = yaml.safe_load(daemon.config_path.read_text())
    data["thresholds"] = thresholds
    daemon.config_path.write_text(yaml.safe_dump(data))


def test_serve_analyses_a_received_series_and_reload_applies_new_thresholds(
    serving: Daemon, tmp_path: Path, study_files: list[Path]
) -> None:
    daemon = serving
    config_db = f"sqlite:///{tmp_path / 'var' / 'triage.db'}"
    assert (tmp_path / "var" / "triage.pid").read_text().strip() == str(daemon.proc.pid)
    source = dcmread(study_files[0], stop_before_pixels=True)
    _send(daemon, study_files)
    first = _series_status(daemon, source.SeriesInstanceUID, timeout=90)
    assert first["job"]["state"] == "done"
    assert first["result"]["decision"] == "absent"
    assert first["result"]["threshold_stack"] == 1.0

    # A bad file: rejected with its key path, exit 2, and nothing changes.
    good = daemon.config_path.read_text()
    _rewrite_thresholds(daemon, {"stack": 1.5})
    out = daemon.cli("reload")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "thresholds.stack" in out.stderr
    daemon.config_path.write_text(good)

    _rewrite_thresholds(daemon, {"stack": 0.0, "slice": 0.0})
    out = daemon.cli("reload")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "thresholds.stack: 1.0 -> 0.0" in out.stdout
    sessions = session_factory(create_db_engine(config_db))
    with sessions() as session:
        events = list(session.scalars(select(AuditEvent)))
    assert [e.kind for e in events] == ["thresholds_reloaded"]
    detail = events[0].detail
    assert detail["old"]["stack"] == 1.0 and detail["new"]["stack"] == 0.0

    # The worker process applies the new thresholds to the next job.
    files = _synthetic_series(8, tmp_path / "second")
    _send(daemon, files)
    second_series = dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    second = _series_status(daemon, second_series, timeout=60)
    assert second["result"]["threshold_stack"] == 0.0
    assert second["result"]["decision"] == "present"
    with sessions() as session:
        assert session.execute(select(WorkerHeartbeat.backend, WorkerHeartbeat.device)).one() == (
            "tensorflow",
            "CPU",
        )

    assert daemon.stop() == 0
    assert not (tmp_path / "var" / "triage.pid").exists()
    with sessions() as session:
        assert session.scalar(select(WorkerHeartbeat)) is None


def test_serve_does_not_make_a_study_wait_for_its_sweep_intervals(
    tmp_path: Path, bundle_dir: Path, study_files: list[Path]
) -> None:
    # Every interval is a minute: the SR can only arrive within the deadline below if the
    # completeness sweep runs when the series turns quiet, wakes the worker, and the
    # worker wakes the dispatcher.
    from dispatch_helpers import Received, start_store_scp

    received = Received()
    pacs = start_store_scp(0, received)
    daemon = Daemon(
        tmp_path,
        series={"stable_seconds": 2.0, "sweep_interval_seconds": 1.0, "selection": SELECTION},
        worker={"processes": 1, "poll_seconds": 60, "heartbeat_seconds": 1},
        dispatch={"sweep_interval_seconds": 60},
        model={"bundle": str(bundle_dir)},
        destinations=[
            {
                "name": "pacs",
                "type": "dicom",
                "ae_title": "PACS",
                "host": "127.0.0.1",
                "port": pacs.server_address[1],
            }
        ],
    ).start()
    try:
        sessions = session_factory(create_db_engine(f"sqlite:///{tmp_path / 'var' / 'triage.db'}"))
        deadline = time.monotonic() + 60
        while True:  # the worker has loaded its bundle and is waiting out its poll
            with sessions() as session:
                if session.scalar(select(WorkerHeartbeat)) is not None:
                    break
            assert time.monotonic() < deadline, daemon.log_text()[-4000:]
            time.sleep(0.2)
        time.sleep(1.0)
        _send(daemon, study_files)
        sent = time.monotonic()
        while not received.stored:
            assert time.monotonic() - sent < 30, daemon.log_text()[-4000:]
            time.sleep(0.1)
        assert received.stored[0][0] == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    finally:
        daemon.stop()
        pacs.shutdown()
