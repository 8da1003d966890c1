"""Analysing claimed jobs: predict, decide, and store the result with its reports.

:class:`Worker` claims a job (see :mod:`triage.jobs`), runs the predictor on the
series' spooled files, and stores in one transaction the :class:`Result`, the SR
(always) and KOS (positives) under ``<data_dir>/outbox/<result id>/sr.dcm`` and
``kos.dcm``, one :class:`Delivery` per destination that applies, and the job's final
state. A crash leaves either all of that or none of it.

Nothing here imports TensorFlow; the predictor is handed in already loaded.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from triage.config import Config, DicomDestination, ThresholdsConfig
from triage.db.models import (
    Decision,
    Delivery,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    utcnow,
)
from triage.dispatch.context import outbox_dir
from triage.jobs import (
    Claim,
    beat,
    claim_job,
    forget_worker,
    held,
    release_claim,
    renew_lease,
    worker_id_for,
)
from triage.logs import describe_error, error_frames, get_logger
from triage.report import AnalysisResult, build_kos, build_sr
from triage.report import Decision as ReportDecision
from triage.report.source import conformant_header
from triage.spool import write_durably

if TYPE_CHECKING:
    from model.predict import Prediction

log = get_logger(__name__)

ALGORITHM_NAME = "CTPA PE triage (CNN+BiLSTM)"


class SeriesPredictor(Protocol):
    """The part of :class:`model.predict.Predictor` a worker uses (tests substitute it)."""

    bundle: Any
    device: str
    backend: str

    def predict(self, files: Sequence[str | Path]) -> Prediction: ...


@dataclass(frozen=True)
class AppliedThresholds:
    """The thresholds one result used, and whether the YAML or the bundle set them."""

    stack: float
    slice: float
    source: str

    def as_dict(self) -> dict[str, float]:
        """``{"stack": ..., "slice": ...}`` for the report's algorithm parameters."""
        return {"stack": self.stack, "slice": self.slice}


def apply_thresholds(
    configured: ThresholdsConfig, bundle_thresholds: Mapping[str, Any]
) -> AppliedThresholds:
    """Pick each threshold: the YAML value if set, else the bundle's (Youden on validation).

    Parameters
    ----------
    configured : ThresholdsConfig
        The ``thresholds`` section in force for this job.
    bundle_thresholds : Mapping
        The bundle's ``{"stack": ..., "slice": ...}``, each a number or an object with a
        ``value`` (attribute or key).

    Returns
    -------
    AppliedThresholds
        ``source`` is ``config`` or ``bundle``, or ``stack=config,slice=bundle`` when
        they differ.
    """

    def bundle_value(key: str) -> float:
        item = bundle_thresholds[key]
        if isinstance(item, Mapping):
            return float(item["value"])
        return float(getattr(item, "value", item))

    stack_src = "config" if configured.stack is not None else "bundle"
    slice_src = "config" if configured.slice is not None else "bundle"
    stack = configured.stack if configured.stack is not None else bundle_value("stack")
    slice_ = configured.slice if configured.slice is not None else bundle_value("slice")
    source = stack_src if stack_src == slice_src else f"stack={stack_src},slice={slice_src}"
    return AppliedThresholds(stack=float(stack), slice=float(slice_), source=source)


def flag_slices(
    slice_probabilities: Mapping[str, float], threshold: float, limit: int
) -> list[str]:
    """The SOP Instance UIDs at or above ``threshold``, most probable first, at most
    ``limit`` of them (ties keep the series order, so a rerun flags the same slices)."""
    ranked = sorted(
        (uid for uid, p in slice_probabilities.items() if p >= threshold),
        key=lambda uid: -slice_probabilities[uid],
    )
    return ranked[:limit]


@dataclass
class _Outcome:
    """What processing a series produced, before it is stored."""

    decision: Decision
    thresholds: AppliedThresholds
    stack_probability: float | None = None
    slice_probabilities: dict[str, float] | None = None
    flagged: list[str] | None = None
    timings: dict[str, float] | None = None
    reason: str | None = None
    # The series' headers as the predictor read them (none for a rejected series).
    headers: list[Dataset] | None = None


@dataclass(frozen=True)
class _Reports:
    """One result's encoded SR and KOS, before they go to the outbox.

    Either may be missing when it could not be built; the other still goes.
    """

    sr: bytes | None = None
    sr_uid: str | None = None
    kos: bytes | None = None
    kos_uid: str | None = None

    def write(self, outbox: Path, result: Result) -> None:
        """Write the files durably and record their SOP Instance UIDs on the result."""
        if self.sr is not None:
            write_durably(outbox / "sr.dcm", self.sr)
            result.sr_sop_instance_uid = self.sr_uid
        if self.kos is not None:
            write_durably(outbox / "kos.dcm", self.kos)
            result.kos_sop_instance_uid = self.kos_uid


class Worker:
    """One inference worker: claims jobs, runs the predictor and stores results.

    Parameters
    ----------
    config : Config
        The configuration (``thresholds`` may be replaced by :meth:`set_thresholds`).
    sessions : sessionmaker
        This process's session factory.
    predictor : SeriesPredictor
        A loaded predictor; loaded once per process, as loading costs seconds.
    worker_id : str, optional
        Defaults to ``<hostname>:<pid>``.
    on_deliveries : callable, optional
        Called after a result that has deliveries is committed.
    """

    def __init__(
        self,
        config: Config,
        sessions: sessionmaker[Session],
        predictor: SeriesPredictor,
        worker_id: str | None = None,
        on_deliveries: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        # Called after a result with deliveries is committed: `triage serve` wakes its
        # dispatcher with it instead of letting the SR wait for the next sweep.
        self.on_deliveries = on_deliveries
        self.sessions = sessions
        self.predictor = predictor
        self.worker_id = worker_id or worker_id_for()
        self.thresholds = config.thresholds
        self._claim: Claim | None = None
        self._claim_lock = threading.Lock()
        self._stop_beating = threading.Event()
        self._beater: threading.Thread | None = None

    # -- heartbeat -------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Beat now, then renew the held lease and the heartbeat row in a thread."""
        self._beat()
        self._beater = threading.Thread(
            target=self._heartbeat_loop, name="triage-worker-heartbeat", daemon=True
        )
        self._beater.start()

    def _beat(self) -> None:
        beat(
            self.sessions,
            self.worker_id,
            self.predictor.device,
            backend=self.predictor.backend,
        )

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat thread and remove this worker's heartbeat row."""
        self._stop_beating.set()
        if self._beater is not None:
            self._beater.join(10)
        try:
            forget_worker(self.sessions, self.worker_id)
        except Exception as err:  # the row only ages out of /healthz then
            log.warning("worker_heartbeat_cleanup_failed", error=str(err))

    def _heartbeat_loop(self) -> None:
        cfg = self.config.worker
        while not self._stop_beating.wait(cfg.heartbeat_seconds):
            try:
                self._beat()
                with self._claim_lock:
                    claim = self._claim
                if claim is not None and not renew_lease(self.sessions, claim, cfg.lease_seconds):
                    log.warning("job_lease_lost", job_id=claim.job_id, worker_id=self.worker_id)
            except Exception as err:  # the database may be briefly away; beat again next time
                log.warning("worker_heartbeat_failed", error=str(err))

    # -- thresholds ------------------------------------------------------------------

    def set_thresholds(self, thresholds: ThresholdsConfig) -> None:
        """Use ``thresholds`` from the next job on (a reload)."""
        if thresholds != self.thresholds:
            log.info(
                "worker_thresholds_applied",
                worker_id=self.worker_id,
                old=self.thresholds.model_dump(),
                new=thresholds.model_dump(),
            )
        self.thresholds = thresholds

    # -- jobs ------------------------------------------------------------------------

    def run_once(self) -> bool:
        """Claim and process one job; ``False`` when the queue held none."""
        claim = claim_job(self.sessions, self.worker_id, self.config.worker.lease_seconds)
        if claim is None:
            return False
        with self._claim_lock:
            self._claim = claim
        try:
            self.process(claim)
        finally:
            with self._claim_lock:
                self._claim = None
        return True

    def process(self, claim: Claim) -> None:
        """Analyse the claimed job's series and store the outcome (see the module doc)."""
        with self.sessions() as session:
            job = session.get(Job, claim.job_id)
            assert job is not None, "a claimed job exists"
            series = job.series
            study_uid = series.study.study_instance_uid
            series_uid = series.series_instance_uid
            files = [
                self.config.spool_dir / path
                for path in session.scalars(
                    select(Instance.file_path)
                    .where(Instance.series_id == series.id, Instance.missing.is_(False))
                    .order_by(Instance.instance_number, Instance.id)
                )
            ]
        bound = log.bind(
            job_id=claim.job_id,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            attempt=claim.attempts,
        )
        bound.info("job_started", instances=len(files), worker_id=self.worker_id)
        thresholds = apply_thresholds(self.thresholds, self.predictor.bundle.thresholds)
        try:
            outcome = self._analyse(files, thresholds)
        except Exception as err:
            self._give_back(claim, err, "job_attempt_failed", "", bound)
            return
        try:
            self._store(claim, series_uid, files, outcome, bound)
        except Exception as err:
            # Building or storing the report failed (a database outage, a full disk):
            # nothing was committed, and the next attempt starts over.
            self._give_back(claim, err, "job_store_failed", "storing the result failed: ", bound)

    def _give_back(
        self, claim: Claim, err: Exception, event: str, context: str, bound: Any
    ) -> None:
        """Return a failed attempt's job to the queue (or fail it) and log why.

        The error is named by its class and where it was raised, never by its message:
        a library's message quotes the value it choked on (a birth date, a name), and
        the job's error is stored and shown on the worklist.
        """
        error = describe_error(err)
        state = release_claim(
            self.sessions,
            claim,
            error=context + error,
            max_attempts=self.config.worker.max_attempts,
        )
        bound.error(
            event,
            error=error,
            new_state=state.value if state else "lost",
            frames=error_frames(err),
        )

    def _analyse(self, files: list[Path], thresholds: AppliedThresholds) -> _Outcome:
        """Run the predictor and decide; a series it rejects is undetermined."""
        from model.preprocess import SeriesRejectedError

        try:
            prediction = self.predictor.predict(files)
        except (SeriesRejectedError, InvalidDicomError, FileNotFoundError) as err:
            # Retrying cannot make a short or unreadable series analysable. The reason
            # goes into the SR the PACS shows: a file is named as the spool knows it
            # (<study>/<series>/<instance>.dcm), not by this host's folders.
            reason = str(err).replace(f"{self.config.spool_dir}{os.sep}", "")
            return _Outcome(Decision.UNDETERMINED, thresholds, reason=reason)
        decision = (
            Decision.PRESENT
            if prediction.stack_probability >= thresholds.stack
            else Decision.ABSENT
        )
        flagged = flag_slices(
            prediction.slice_probabilities, thresholds.slice, self.thresholds.max_flagged_slices
        )
        return _Outcome(
            decision,
            thresholds,
            stack_probability=float(prediction.stack_probability),
            slice_probabilities={k: float(v) for k, v in prediction.slice_probabilities.items()},
            flagged=flagged,
            timings=dict(prediction.timings),
            headers=prediction.headers,
        )

    def _store(
        self, claim: Claim, series_uid: str, files: list[Path], outcome: _Outcome, bound: Any
    ) -> None:
        """Write the result, its reports and deliveries, and finish the job, atomically."""
        # The predictor hands over the headers it read; only a series it rejected (or a
        # predictor that keeps none) needs its files read again.
        headers = outcome.headers or _read_headers(files, bound)
        bundle = self.predictor.bundle
        # Built before the transaction: on SQLite the transaction holds the database's
        # write lock, which the receiver needs for every instance it acknowledges.
        started = time.perf_counter()
        reports = self._build_reports(claim, outcome, headers, bound)
        with self.sessions() as session:
            # A write first: on SQLite it takes the write lock, so what is read below
            # cannot change before the commit; everywhere it proves the claim still holds.
            still_ours = session.execute(
                update(Job)
                .where(held(claim))
                .values(updated_at=utcnow())
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if not still_ours:
                bound.warning("result_discarded", reason="the job is no longer this worker's")
                return
            job = session.get(Job, claim.job_id)
            assert job is not None
            series = session.get(Series, job.series_id)
            assert series is not None
            if series.state != SeriesState.QUEUED:
                # New instances arrived while we analysed: this result describes an
                # incomplete series. The completeness sweep requeues the job.
                job.state = JobState.QUEUED
                job.attempts = claim.attempts - 1
                job.worker_id = None
                job.lease_expires_at = None
                session.commit()
                bound.info("result_discarded", reason=f"series is {series.state.value} again")
                return
            result = Result(
                job_id=job.id,
                series_id=series.id,
                decision=outcome.decision,
                stack_probability=outcome.stack_probability,
                slice_probabilities=json.dumps(outcome.slice_probabilities or {}),
                flagged_sop_instance_uids=json.dumps(outcome.flagged or []),
                threshold_stack=outcome.thresholds.stack,
                threshold_slice=outcome.thresholds.slice,
                threshold_source=outcome.thresholds.source,
                bundle_name=bundle.name,
                bundle_version=bundle.version,
                bundle_sha256=bundle.manifest_sha256,
                reason=outcome.reason,
                timings=json.dumps(outcome.timings or {}),
            )
            session.add(result)
            session.flush()
            if reports is not None:
                reports.write(outbox_dir(self.config.data_dir, result.id), result)
            timings = dict(outcome.timings or {})
            timings["report"] = time.perf_counter() - started
            result.timings = json.dumps(timings)
            destinations = self._deliveries(outcome.decision, reports)
            for name in destinations:
                session.add(Delivery(result_id=result.id, destination=name))
            if outcome.decision == Decision.UNDETERMINED:
                job.state = JobState.UNDETERMINED
                job.reason = outcome.reason
            else:
                job.state = JobState.DONE
                job.reason = None
            job.error = None
            job.lease_expires_at = None
            session.commit()
        if destinations and self.on_deliveries is not None:
            self.on_deliveries()
        bound.info(
            "job_done",
            result_id=result.id,
            decision=outcome.decision.value,
            stack_probability=outcome.stack_probability,
            threshold_stack=outcome.thresholds.stack,
            threshold_source=outcome.thresholds.source,
            flagged_slices=len(outcome.flagged or []),
            sr=reports is not None and reports.sr is not None,
            kos=reports is not None and reports.kos is not None,
            deliveries=destinations,
            reason=outcome.reason,
            seconds=round((outcome.timings or {}).get("total", 0.0), 3),
        )

    def _build_reports(
        self, claim: Claim, outcome: _Outcome, headers: list[Dataset], bound: Any
    ) -> _Reports | None:
        """Build and encode the SR (and, for a positive, the KOS); None without headers."""
        if not headers:
            bound.warning("report_skipped", reason="no readable header in the series")
            return None
        # Made conformant once, with one log line per value repaired or left out; the
        # builders then find nothing more to change.
        patient_study = None
        try:
            patient_study = conformant_header(headers[0], bound)
        except Exception as err:  # the builders try again; what they cannot build is left
            bound.error("header_conform_failed", error=describe_error(err))
        bundle = self.predictor.bundle
        analysis = AnalysisResult(
            # Seeds the reports' UIDs; unique per analysis, as the result row's id does
            # not exist yet. A resend reads the outbox file, so it keeps the same UIDs.
            result_id=f"job-{claim.job_id}-{uuid.uuid4().hex}",
            decision=cast(ReportDecision, outcome.decision.value),
            stack_probability=outcome.stack_probability,
            slice_probabilities=outcome.slice_probabilities or {},
            flagged_sop_instance_uids=outcome.flagged or [],
            thresholds=outcome.thresholds.as_dict(),
            algorithm_name=ALGORITHM_NAME,
            algorithm_version=f"{bundle.name} {bundle.version}"[:64],
            bundle_sha256=bundle.manifest_sha256,
            undetermined_reason=outcome.reason,
        )
        report = self.config.report
        options: dict[str, Any] = {
            "manufacturer": report.manufacturer,
            "device_serial": report.device_serial_number,
            "institution_name": report.institution_name,
            "patient_study": patient_study,
        }
        # Each object on its own: a header that still defeats one builder must not
        # keep the other object, the HL7 flag or the worklist from the radiologist.
        sr = _built("sr", lambda: build_sr(analysis, headers, **options), bound)
        kos = _built("kos", lambda: build_kos(analysis, headers, **options), bound)
        return _Reports(
            sr=sr[0] if sr else None,
            sr_uid=sr[1] if sr else None,
            kos=kos[0] if kos else None,
            kos_uid=kos[1] if kos else None,
        )

    def _deliveries(self, decision: Decision, reports: _Reports | None) -> list[str]:
        """Destination names that get this result: DICOM when there is an object to
        store, the others (the HL7 flag, UPS, webhooks) for every positive."""
        has_object = reports is not None and (reports.sr is not None or reports.kos is not None)
        return [
            d.name
            for d in self.config.destinations
            if (has_object if isinstance(d, DicomDestination) else decision == Decision.PRESENT)
        ]


def _built(what: str, build: Callable[[], Dataset | None], bound: Any) -> tuple[bytes, str] | None:
    """Build and encode one report object: its bytes and SOP Instance UID, or None.

    A failure is logged by the error's class and place only: a library's message
    quotes the header value it refused.
    """
    try:
        dataset = build()
        if dataset is None:
            return None
        return _encode(dataset), str(dataset.SOPInstanceUID)
    except Exception as err:
        bound.error(
            "report_build_failed", object=what, error=describe_error(err), frames=error_frames(err)
        )
        return None


def _encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _read_headers(files: list[Path], bound: Any) -> list[Dataset]:
    """The series' headers for the reports; unreadable files are left out."""
    headers: list[Dataset] = []
    for path in files:
        try:
            headers.append(dcmread(path, stop_before_pixels=True))
        except (InvalidDicomError, OSError) as err:
            bound.warning("header_unreadable", file=path.name, error=str(err))
    return headers
