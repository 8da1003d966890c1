"""Inference worker processes: each loads the weight bundle once, then claims and runs jobs.

- :func:`run_worker` is one worker's loop (see :class:`triage.analyse.worker.Worker`).
- :class:`WorkerProcesses` runs them as spawned children, kept alive by a
  :class:`triage.supervisor.Supervisor`, for ``triage serve``.
- :func:`run_workers` is ``triage worker``: workers alone, for example on a GPU host.

Keras and its backend (TensorFlow by default; JAX or PyTorch by ``model.backend``) are
imported only inside a worker process (by :func:`triage.analyse.placement.load_predictor`),
never when this module is imported: ``triage serve`` imports it to start workers, and its
receiver must start in about a second and survive a crash in the backend.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from triage.analyse.worker import Worker
from triage.config import Config, load_config
from triage.db import create_db_engine, session_factory
from triage.errors import ConfigError
from triage.logs import configure_logging, get_logger
from triage.report import warm_up as warm_up_reports
from triage.signal_event import SignalEvent
from triage.states.job import release_worker_jobs, worker_id_for
from triage.supervisor import (
    DELIVERIES_STORED,
    JOBS_QUEUED,
    RELOAD,
    ParentWatch,
    Restarts,
    Supervision,
    Supervisor,
    notify,
)

__all__ = [
    "RequestEvent",
    "StopEvent",
    "WorkerProcesses",
    "run_worker",
    "run_workers",
]

log = get_logger(__name__)

#: How long a stopping worker may finish its job before it is killed (and its job
#: requeued without counting the attempt against it).
STOP_TIMEOUT = 30.0
# A worker process that dies within 30 s of its start is restarted after a growing
# delay, from 2 s up to 60 s (a bundle that cannot load must not make it spin).
_RESTARTS = Restarts(stable_after=30.0, first_backoff=2.0, max_backoff=60.0)


class StopEvent(Protocol):
    """What a worker loop waits on: a :class:`~triage.signal_event.SignalEvent`, a
    ``threading.Event`` or a multiprocessing one."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class RequestEvent(StopEvent, Protocol):
    """A request the worker loop answers and then clears (reload, wake): a
    :class:`~triage.signal_event.SignalEvent` or a ``threading.Event``."""

    def clear(self) -> None: ...


def run_worker(
    config_path: Path,
    stop_event: StopEvent,
    *,
    reload_event: RequestEvent | None = None,
    log_format: str | None = None,
    log_level: str | None = None,
    parent_pid: int | None = None,
    wake_event: RequestEvent | None = None,
    notify_parent: bool = False,
    worker_index: int = 0,
) -> None:
    """Run one worker until ``stop_event`` is set: load the bundle once, then loop.

    Parameters
    ----------
    config_path : Path
        The YAML file; re-read for its ``thresholds`` whenever ``reload_event`` is set.
    stop_event : StopEvent
        Set to stop after the job in hand.
    reload_event : RequestEvent, optional
        Set (by SIGHUP) to re-read the thresholds before the next job.
    log_format, log_level : str, optional
        Override the configuration's logging settings (the command line's).
    parent_pid : int, optional
        Stop when this process is no longer our parent (it was killed outright).
    wake_event : RequestEvent, optional
        Set (on :data:`~triage.supervisor.JOBS_QUEUED` from the daemon's completeness
        sweep) to look for a job now rather than after ``worker.poll_seconds``; also
        set when stopping.
    notify_parent : bool
        Send :data:`~triage.supervisor.DELIVERIES_STORED` to ``parent_pid``
        (``triage serve``) after each result with deliveries, so that its dispatcher
        sends the report at once.
    worker_index : int
        This worker's number among ``worker.processes``, from 0: with ``model.device:
        auto`` and several GPUs, it picks this worker's GPU.
    """
    config = load_config(config_path)
    configure_logging(log_format or config.logging.format, log_level or config.logging.level)
    # Warnings (an untrained bundle, a thread count it cannot set) come out as JSON
    # lines through configure_logging.
    from triage.analyse.placement import load_predictor

    engine = create_db_engine(config.database_url, config.database.busy_timeout_ms)
    sessions = session_factory(engine)
    worker_id = worker_id_for()
    try:
        predictor = load_predictor(config, worker_index)
        on_deliveries = None
        if notify_parent and parent_pid is not None:
            pid = parent_pid

            def on_deliveries() -> None:
                notify(pid, DELIVERIES_STORED)

        _settle(predictor, worker_id)
        worker = Worker(
            config,
            sessions,
            predictor,
            worker_id,
            on_deliveries=on_deliveries,
            worker_index=worker_index,
        )
        worker.start_heartbeat()
        log.info(
            "worker_started",
            worker_id=worker_id,
            backend=predictor.backend,
            device=predictor.device,
            precision=predictor.precision,
            bundle=predictor.bundle.name,
            bundle_version=predictor.bundle.version,
            bundle_sha256=predictor.bundle.manifest_sha256,
        )
        parent = ParentWatch(parent_pid) if parent_pid is not None else None
        try:
            _work(worker, config_path, stop_event, reload_event, wake_event, parent)
        finally:
            worker.stop_heartbeat()
            log.info("worker_stopped", worker_id=worker_id)
    finally:
        engine.dispose()


def _settle(predictor: Any, worker_id: str) -> None:
    """What a worker does once, after loading the model and before its first job."""
    try:
        warm_up_reports()
    except Exception as err:  # only the first study's latency depends on it
        log.warning("report_warm_up_failed", error=str(err))
    # The model's millions of long-lived objects would make every full garbage
    # collection scan them (a pause of tenths of a second in the middle of a study);
    # they live as long as the process, so take them out of the collector's sight.
    gc.collect()
    gc.freeze()
    if predictor.device == "CPU":
        # Said once, in place of TensorFlow's "failed call to cuInit" error line.
        log.info(
            "worker_device",
            worker_id=worker_id,
            backend=predictor.backend,
            message="no GPU, using the CPU",
        )


def _work(
    worker: Worker,
    config_path: Path,
    stop_event: StopEvent,
    reload_event: RequestEvent | None,
    wake_event: RequestEvent | None,
    parent: ParentWatch | None,
) -> None:
    """Take jobs until ``stop_event`` is set or the parent is gone; between jobs, apply
    a reload; with the queue empty, preprocess a series about to be complete, or else wait
    for a wake-up or ``worker.poll_seconds``."""
    poll = worker.config.worker.poll_seconds
    while not stop_event.is_set():
        if parent is not None and parent.gone():
            log.warning("worker_parent_gone", worker_id=worker.worker_id)
            break
        if reload_event is not None and reload_event.is_set():
            reload_event.clear()
            _reload_thresholds(worker, config_path)
        try:
            busy = worker.run_once() or worker.prepare_early()
        except Exception as err:  # the database may be briefly away; try again
            log.error("worker_loop_failed", error=str(err), exc_info=True)
            busy = False
        if not busy:
            if wake_event is None:
                stop_event.wait(poll)
            else:
                wake_event.wait(poll)
                wake_event.clear()


def _reload_thresholds(worker: Worker, config_path: Path) -> None:
    try:
        config = load_config(config_path)
    except ConfigError as err:
        log.error("worker_reload_rejected", problems=[f"{p}: {r}" for p, r in err.problems])
        return
    worker.set_thresholds(config.thresholds)


def _worker_process_main(
    config_path: Path,
    log_format: str | None,
    log_level: str | None,
    notify_parent: bool,
    worker_index: int = 0,
) -> None:
    """The body of a worker process: signals first, then :func:`run_worker`."""
    # Set by signal handlers, so events that take no lock (see triage.signal_event).
    stop = SignalEvent()
    reload = SignalEvent()
    wake = SignalEvent()

    def on_term(_s: int, _f: object) -> None:
        stop.set()
        wake.set()

    # Installed before anything slow: SIGHUP's and SIGUSR1's default actions would kill
    # the process.
    signal.signal(RELOAD, lambda _s, _f: reload.set())
    signal.signal(JOBS_QUEUED, lambda _s, _f: wake.set())
    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C reaches the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run_worker(
            config_path,
            stop,
            reload_event=reload,
            log_format=log_format,
            log_level=log_level,
            parent_pid=os.getppid(),
            wake_event=wake,
            notify_parent=notify_parent,
            worker_index=worker_index,
        )
    except Exception as err:
        configure_logging(log_format or "json", log_level or "INFO")
        log.error("worker_failed", error=f"{type(err).__name__}: {err}", exc_info=True)
        raise SystemExit(1) from err


def _spawn(
    config_path: Path,
    index: int,
    log_format: str | None,
    log_level: str | None,
    notify_parent: bool = False,
) -> SpawnProcess:
    # spawn, not fork: the parent runs threads and holds database connections, and a
    # spawned child imports Keras and its backend itself (after choosing them), so the
    # parent never does.
    process = multiprocessing.get_context("spawn").Process(
        target=_worker_process_main,
        args=(Path(config_path).resolve(), log_format, log_level, notify_parent, index),
        name=f"triage-worker-{index}",
    )
    process.start()
    return process


class WorkerProcesses:
    """``worker.processes`` workers kept alive by ``triage serve`` or ``triage worker``.

    A worker that dies is restarted (after a growing delay if it died young, so a bundle
    that cannot load does not spin), and its job is requeued at once instead of
    waiting out the lease. :meth:`wake` sends idle workers to the queue at once; with
    ``notify_parent`` (``triage serve``), a worker tells this process after each result
    with deliveries (:data:`~triage.supervisor.DELIVERIES_STORED`).
    """

    def __init__(
        self,
        config_path: Path,
        config: Config,
        sessions: sessionmaker[Session],
        *,
        log_format: str | None = None,
        log_level: str | None = None,
        notify_parent: bool = False,
    ) -> None:
        self._config_path = Path(config_path)
        self._notify_parent = notify_parent
        self._config = config
        self._sessions = sessions
        self._log_format = log_format
        self._log_level = log_level
        self._supervisor = Supervisor("worker", self._spawn, _RESTARTS, self._release)

    def start(self, n: int) -> None:
        """Start ``n`` workers (they load the bundle in the background)."""
        self._supervisor.start(n)

    def _spawn(self, index: int) -> SpawnProcess:
        return _spawn(
            self._config_path, index, self._log_format, self._log_level, self._notify_parent
        )

    def wake(self) -> None:
        """Ask idle workers to look for a job now (jobs were just queued)."""
        self._supervisor.signal(JOBS_QUEUED)

    def pids(self) -> list[int]:
        """The live workers' process ids."""
        return self._supervisor.pids()

    def check(self) -> None:
        """Restart dead workers and give back their jobs; called periodically."""
        self._supervisor.check()

    def supervision(self) -> Supervision:
        """How many workers are up, for ``/healthz`` (see :meth:`Supervisor.supervision`)."""
        return self._supervisor.supervision()

    def reload(self) -> None:
        """Ask every worker to re-read its thresholds before its next job."""
        self._supervisor.signal(RELOAD)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every worker; a killed worker's job goes back to the queue uncounted."""
        self._supervisor.stop(timeout)

    def _release(self, pid: int, killed: bool) -> None:
        # Died on its own: the attempt counts (the job may be what killed it). Killed
        # by us for being slow to stop: it does not.
        try:
            release_worker_jobs(
                self._sessions,
                worker_id_for(pid),
                self._config.worker.max_attempts,
                count_attempt=not killed,
            )
        except Exception as err:  # the lease-expiry sweep catches what this misses
            log.error("worker_jobs_release_failed", pid=pid, error=str(err))


def run_workers(
    config_path: Path,
    config: Config,
    *,
    log_format: str | None = None,
    log_level: str | None = None,
) -> int:
    """``triage worker``: run ``worker.processes`` workers (at least 1) until SIGTERM.

    SIGHUP re-reads the thresholds (recorded as an audit event, as ``triage serve``
    does) and passes them on to the workers. Returns the exit code.
    """
    from triage.db import migrate
    from triage.reload import apply_reload

    engine = create_db_engine(config.database_url, config.database.busy_timeout_ms)
    migrate(engine)
    sessions = session_factory(engine)
    # Set by signal handlers, so events that take no lock (see triage.signal_event); the
    # handler only notes the signal, which the loop logs.
    stop = SignalEvent()
    reload_requested = SignalEvent()
    handlers = {
        signal.SIGTERM: lambda signum, _f: stop.set(signum),
        signal.SIGINT: lambda signum, _f: stop.set(signum),
        signal.SIGHUP: lambda _s, _f: reload_requested.set(),
    }
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    count = max(1, config.worker.processes)
    workers = WorkerProcesses(
        config_path, config, sessions, log_format=log_format, log_level=log_level
    )
    try:
        workers.start(count)
        log.info("workers_serving", worker_processes=count, pid=os.getpid())
        while not stop.wait(0.5):
            workers.check()
            if reload_requested.is_set():
                reload_requested.clear()
                reloaded = apply_reload(config_path, config, sessions)
                if reloaded is not config:
                    workers.reload()
                config = reloaded
        if stop.signum is not None:
            log.info("stop_requested", signal=signal.Signals(stop.signum).name)
    finally:
        workers.stop()
        engine.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("workers_stopped")
    return 0
