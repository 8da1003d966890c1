"""The inference worker: claim a job, analyse its series, report, store; then the next.

:class:`Worker` runs a job through the stages of :mod:`triage.analyse`:

1. claim it (:func:`triage.states.job.claim_job`) and keep its lease alive
   (:class:`~triage.analyse.lease.Heartbeat`);
2. predict and decide (:func:`~triage.analyse.decide.analyse`), on the model input
   made while the series was still quiet (:mod:`~triage.analyse.early`) where it holds;
3. build the SR and KOS (:func:`~triage.analyse.reports.build_reports`);
4. store the result, its reports and deliveries, and finish the job, in one
   transaction (:func:`~triage.analyse.store.store_result`);
5. only then, so that the flag never waits for them, make the study view's key images:
   heat maps of the top flagged slices (:mod:`~triage.analyse.key_images`).

A failed attempt gives the job back (``queued`` again, or ``failed`` once its attempts
run out). Between jobs, an idle worker preprocesses the series that are about to be
complete (:meth:`Worker.prepare_early`). Nothing here imports TensorFlow; the predictor
is handed in already loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from sqlalchemy.orm import Session, sessionmaker

from triage.analyse.decide import (
    AppliedThresholds,
    PreparingPredictor,
    SeriesPredictor,
    analyse,
    apply_thresholds,
    flag_slices,
)
from triage.analyse.early import EarlyPreprocessor, series_files
from triage.analyse.key_images import SecondaryCaptureRequest, make_key_images
from triage.analyse.lease import Heartbeat
from triage.analyse.reports import ALGORITHM_NAME, build_reports, read_headers
from triage.analyse.store import store_result
from triage.config import Config, ThresholdsConfig
from triage.db.models import Job, utcnow
from triage.logs import describe_error, error_frames, get_logger
from triage.states import delivery as delivery_state
from triage.states.job import Claim, claim_job, release_claim, worker_id_for

__all__ = [
    "ALGORITHM_NAME",
    "AppliedThresholds",
    "SeriesPredictor",
    "Worker",
    "apply_thresholds",
    "flag_slices",
]

log = get_logger(__name__)


class Worker:
    """One inference worker: claims jobs and takes each through analysis to its result.

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
    worker_index : int
        This worker's number among ``worker.processes``, from 0: which quiet series it
        preprocesses early.
    """

    def __init__(
        self,
        config: Config,
        sessions: sessionmaker[Session],
        predictor: SeriesPredictor,
        worker_id: str | None = None,
        on_deliveries: Callable[[], None] | None = None,
        worker_index: int = 0,
    ) -> None:
        self.config = config
        # Called after a result with deliveries is committed: `triage serve` wakes its
        # dispatcher with it instead of letting the SR wait for the next sweep.
        self.on_deliveries = on_deliveries
        self.sessions = sessions
        self.predictor = predictor
        self.worker_id = worker_id or worker_id_for()
        self.thresholds = config.thresholds
        self._explainers: dict[int, Any] = {}
        self.heartbeat = Heartbeat(
            sessions, config.worker, self.worker_id, predictor.device, predictor.backend
        )
        # Only a predictor that can preprocess apart from predicting (tests substitute
        # ones that cannot).
        self.early = (
            EarlyPreprocessor(
                config,
                sessions,
                cast(PreparingPredictor, predictor),
                worker_index,
                config.worker.processes,
            )
            if config.worker.preprocess_early
            and all(hasattr(predictor, n) for n in ("preprocess", "predict_preprocessed"))
            else None
        )

    def start_heartbeat(self) -> None:
        """Beat now, then renew the held lease and the heartbeat row in a thread."""
        self.heartbeat.start()

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat thread and remove this worker's heartbeat row."""
        self.heartbeat.stop()

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

    def run_once(self) -> bool:
        """Claim and process one job; ``False`` when the queue held none."""
        claim = claim_job(
            self.sessions,
            self.worker_id,
            self.config.worker.lease_seconds,
            prefer_series=self.early.series_ids if self.early else (),
        )
        if claim is None:
            return False
        self.heartbeat.hold(claim)
        try:
            self.process(claim)
        finally:
            self.heartbeat.hold(None)
        return True

    def prepare_early(self) -> bool:
        """Preprocess one series that is about to be complete; ``False`` when none is
        due (see :mod:`triage.analyse.early`)."""
        return self.early is not None and self.early.prepare_next()

    def process(self, claim: Claim) -> None:
        """Analyse the claimed job's series and store the outcome (see the module doc)."""
        study_uid, series_uid, series_id, files = self._series_files(claim)
        prepared = self.early.take(series_id, files) if self.early else None
        bound = log.bind(
            job_id=claim.job_id,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            attempt=claim.attempts,
        )
        bound.info(
            "job_started",
            instances=len(files),
            worker_id=self.worker_id,
            preprocessed_early=prepared is not None,
        )
        thresholds = apply_thresholds(self.thresholds, self.predictor.bundle.thresholds)
        try:
            outcome = analyse(
                self.predictor,
                files,
                thresholds,
                self.thresholds.max_flagged_slices,
                self.config.spool_dir,
                prepared,
            )
        except Exception as err:
            self._give_back(claim, err, "job_attempt_failed", "", bound)
            return
        try:
            # The predictor hands over the headers it read; only a series it rejected
            # (or a predictor that keeps none) needs its files read again.
            headers = outcome.headers or read_headers(files, bound)
            bundle = self.predictor.bundle
            started = time.perf_counter()
            reports = build_reports(
                claim.job_id, outcome, headers, bundle, self.config.report, bound
            )
            stored = store_result(
                self.sessions, claim, outcome, reports, self.config, bundle, started, bound
            )
        except Exception as err:
            # Building or storing the report failed (a database outage, a full disk):
            # nothing was committed, and the next attempt starts over.
            self._give_back(claim, err, "job_store_failed", "storing the result failed: ", bound)
            return
        if stored is None:
            return
        if set(stored.destinations) - set(stored.held) and self.on_deliveries is not None:
            self.on_deliveries()
        bound.info(
            "job_done",
            result_id=stored.result_id,
            decision=outcome.decision.value,
            stack_probability=outcome.stack_probability,
            threshold_stack=outcome.thresholds.stack,
            threshold_source=outcome.thresholds.source,
            flagged_slices=len(outcome.flagged or []),
            sr=reports is not None and reports.sr is not None,
            kos=reports is not None and reports.kos is not None,
            deliveries=stored.destinations,
            reason=outcome.reason,
            seconds=round((outcome.timings or {}).get("total", 0.0), 3),
        )
        if outcome.slice_probabilities and headers:
            self._key_images(stored.result_id, files, headers, outcome, bool(stored.held), bound)
        if stored.held:
            # Written or not, the SR and KOS of those destinations go now.
            with self.sessions() as session:
                delivery_state.release_held(session, stored.result_id, stored.held, utcnow())
                session.commit()
            if self.on_deliveries is not None:
                self.on_deliveries()

    def _key_images(
        self,
        result_id: int,
        files: list[Path],
        headers: list[Any],
        outcome: Any,
        secondary_capture: bool,
        bound: Any,
    ) -> None:
        """Write the study view's key images of a stored result (see the module doc).

        A failure is logged and costs the result nothing: its reports and flag stand.
        """
        top_k = self.config.worker.heatmap_slices
        if top_k > 0 and not hasattr(self.predictor, "slice_cnns"):
            bound.warning("key_images_skipped", reason="the predictor has no slice CNNs")
            top_k = 0
        try:
            written = make_key_images(
                self.predictor,
                files,
                headers,
                outcome,
                self.config.data_dir,
                result_id,
                top_k,
                self._explainers,
                SecondaryCaptureRequest(self.config.report, self.predictor.bundle)
                if secondary_capture
                else None,
                bound,
            )
        except Exception as err:
            bound.error(
                "key_images_failed",
                result_id=result_id,
                error=describe_error(err),
                frames=error_frames(err),
            )
            return
        if written.folder is None:
            bound.warning("key_images_skipped", result_id=result_id, reason="outbox unpublished")
            return
        bound.info(
            "key_images_written",
            result_id=result_id,
            images=len(written.images),
            secondary_capture=written.secondary_capture,
            seconds=round(written.seconds, 3),
        )

    def _series_files(self, claim: Claim) -> tuple[str, str, int, list[Path]]:
        """The claimed job's study and series UIDs, series id, and spooled files in order."""
        with self.sessions() as session:
            job = session.get(Job, claim.job_id)
            assert job is not None, "a claimed job exists"
            series = job.series
            files = series_files(session, self.config.spool_dir, series.id)
            return (
                series.study.study_instance_uid,
                series.series_instance_uid,
                series.id,
                files,
            )

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
