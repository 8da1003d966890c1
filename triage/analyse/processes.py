"""Inference worker processes: each loads the weight bundle once, then claims and runs jobs.

- :func:`run_worker` is one worker's loop (see :class:`triage.analyse.worker.Worker`).
- :class:`WorkerProcesses` runs them as spawned children and restarts those that die,
  for ``triage serve`` (:func:`stop_worker_processes` stops them, then kills).
- :func:`run_workers` is ``triage worker``: workers alone, for example on a GPU host.

Keras and its backend (TensorFlow by default; JAX or PyTorch by ``model.backend``) are
imported only inside a worker process (by :func:`triage.analyse.placement.load_predictor`), never
when this module is imported: ``triage serve`` imports it to start workers, and its
receiver must start in about a second and survive a crash in the backend.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from triage.analyse.worker import Worker
from triage.config import Config, load_config
from triage.db import create_db_engine, session_factory
from triage.errors import ConfigError
from triage.logs import configure_logging, get_logger
from triage.report import warm_up as warm_up_reports
from triage.states.job import release_worker_jobs, worker_id_for

__all__ = [
    "StopEvent",
    "WorkerProcesses",
    "run_worker",
    "run_workers",
    "signal_worker_processes",
    "stop_worker_processes",
]

log = get_logger(__name__)

#: How long a stopping worker may finish its job before it is killed (and its job
#: requeued without counting the attempt against it).
STOP_TIMEOUT = 30.0
# A worker process that dies sooner than this after its start is restarted after a
# growing delay (a bundle that cannot load must not make it spin).
_STABLE_AFTER = 30.0
_MAX_BACKOFF = 60.0


class StopEvent(Protocol):
    """What a worker loop waits on: a ``threading.Event`` or a multiprocessing one."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


def run_worker(
    config_path: Path,
    stop_event: StopEvent,
    *,
    reload_event: threading.Event | None = None,
    log_format: str | None = None,
    log_level: str | None = None,
    parent_pid: int | None = None,
    wake_event: threading.Event | None = None,
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
    reload_event : threading.Event, optional
        Set (by SIGHUP) to re-read the thresholds before the next job.
    log_format, log_level : str, optional
        Override the configuration's logging settings (the command line's).
    parent_pid : int, optional
        Stop when this process is no longer our parent (it was killed outright).
    wake_event : threading.Event, optional
        Set (by SIGUSR1 from the daemon's completeness sweep) to look for a job now
        rather than after ``worker.poll_seconds``; also set when stopping.
    notify_parent : bool
        Send SIGUSR1 to ``parent_pid`` (``triage serve``) after each result with
        deliveries, so that its dispatcher sends the report at once.
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
                with contextlib.suppress(ProcessLookupError):  # the daemon is going away
                    os.kill(pid, signal.SIGUSR1)

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
        worker = Worker(config, sessions, predictor, worker_id, on_deliveries=on_deliveries)
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
        try:
            while not stop_event.is_set():
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.warning("worker_parent_gone", worker_id=worker_id)
                    break
                if reload_event is not None and reload_event.is_set():
                    reload_event.clear()
                    _reload_thresholds(worker, config_path)
                try:
                    busy = worker.run_once()
                except Exception as err:  # the database may be briefly away; try again
                    log.error("worker_loop_failed", error=str(err), exc_info=True)
                    busy = False
                if not busy:
                    if wake_event is None:
                        stop_event.wait(config.worker.poll_seconds)
                    else:
                        wake_event.wait(config.worker.poll_seconds)
                        wake_event.clear()
        finally:
            worker.stop_heartbeat()
            log.info("worker_stopped", worker_id=worker_id)
    finally:
        engine.dispose()


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
    stop = threading.Event()
    reload = threading.Event()
    wake = threading.Event()

    def on_term(_s: int, _f: object) -> None:
        stop.set()
        wake.set()

    # Installed before anything slow: SIGHUP's and SIGUSR1's default actions would kill
    # the process.
    signal.signal(signal.SIGHUP, lambda _s, _f: reload.set())
    signal.signal(signal.SIGUSR1, lambda _s, _f: wake.set())
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


def stop_worker_processes(
    procs: Sequence[multiprocessing.process.BaseProcess], timeout: float = STOP_TIMEOUT
) -> list[int]:
    """SIGTERM the workers, wait up to ``timeout`` seconds for them, then kill the rest.

    Returns
    -------
    list of int
        The pids that had to be killed; their jobs are still ``running`` and should be
        given back (:func:`triage.states.job.release_claim` or the lease-expiry sweep).
    """
    live = [p for p in procs if p.is_alive()]
    for process in live:
        process.terminate()
    deadline = time.monotonic() + timeout
    killed = []
    for process in live:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("worker_process_killed", pid=process.pid)
            process.kill()
            process.join()
            if process.pid is not None:
                killed.append(process.pid)
    return killed


def signal_worker_processes(
    procs: Sequence[multiprocessing.process.BaseProcess], signum: int = signal.SIGHUP
) -> None:
    """Send ``signum`` (SIGHUP: re-read the thresholds) to every live worker."""
    for process in procs:
        if process.is_alive() and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it just exited
                os.kill(process.pid, signum)


@dataclass(frozen=True)
class WorkerSupervision:
    """What the supervisor knows of its worker processes: how many should run, how many
    are up, and how many restarts there have been since start-up."""

    expected: int
    up: int
    restarts: int


class WorkerProcesses:
    """``worker.processes`` workers kept alive by ``triage serve`` or ``triage worker``.

    A worker that dies is restarted (after a growing delay if it died young, so a bundle
    that cannot load does not spin), and its job is requeued at once instead of
    waiting out the lease. :meth:`wake` sends idle workers to the queue at once; with
    ``notify_parent`` (``triage serve``), a worker sends this process SIGUSR1 after each
    result with deliveries.
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
        self._procs: list[SpawnProcess | None] = []
        self._started: list[float] = []
        self._backoff: list[float] = []
        self._restart_at: list[float | None] = []
        self._restarts: list[int] = []
        self._stopping = False

    def start(self, n: int) -> None:
        """Start ``n`` workers (they load the bundle in the background)."""
        for i in range(n):
            self._procs.append(self._spawn(i))
            self._started.append(time.monotonic())
            self._backoff.append(0.0)
            self._restart_at.append(None)
            self._restarts.append(0)

    def _spawn(self, index: int) -> SpawnProcess:
        return _spawn(
            self._config_path, index, self._log_format, self._log_level, self._notify_parent
        )

    def wake(self) -> None:
        """Ask idle workers to look for a job now (jobs were just queued)."""
        signal_worker_processes([p for p in self._procs if p is not None], signal.SIGUSR1)

    def pids(self) -> list[int]:
        """The live workers' process ids."""
        return [p.pid for p in self._procs if p is not None and p.pid and p.is_alive()]

    def check(self) -> None:
        """Restart dead workers and give back their jobs; called periodically."""
        if self._stopping:
            return
        now = time.monotonic()
        for i, process in enumerate(self._procs):
            if process is None or process.is_alive():
                continue
            if self._restart_at[i] is None:
                lived = now - self._started[i]
                self._backoff[i] = (
                    0.0
                    if lived >= _STABLE_AFTER
                    else min(_MAX_BACKOFF, max(2.0, 2 * self._backoff[i]))
                )
                self._restart_at[i] = now + self._backoff[i]
                log.error(
                    "worker_process_died",
                    pid=process.pid,
                    exitcode=process.exitcode,
                    restart_in_seconds=self._backoff[i],
                )
                if process.pid is not None:
                    self._release(process.pid)
            restart_at = self._restart_at[i]
            if restart_at is not None and now >= restart_at:
                process.close()
                self._procs[i] = self._spawn(i)
                self._started[i] = now
                self._restart_at[i] = None
                self._restarts[i] += 1
                log.info("worker_process_restarted", worker_process=i)

    def supervision(self) -> WorkerSupervision:
        """How many workers are up, for ``/healthz``; safe to call from another thread.

        A worker is up when its process runs and, if it was restarted, has run for
        ``_STABLE_AFTER`` seconds since: one that keeps dying (a bundle that cannot load,
        a crash on every study) counts as down from its first death, not only once jobs
        have piled up. Read from what :meth:`check` recorded, without waiting on any
        process, so that this never races the main thread's reaping.
        """
        now = time.monotonic()
        up = sum(
            1
            for i in range(len(self._procs))
            if self._restart_at[i] is None
            and (self._restarts[i] == 0 or now - self._started[i] >= _STABLE_AFTER)
        )
        return WorkerSupervision(expected=len(self._procs), up=up, restarts=sum(self._restarts))

    def reload(self) -> None:
        """Ask every worker to re-read its thresholds before its next job."""
        signal_worker_processes([p for p in self._procs if p is not None])

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every worker; a killed worker's job goes back to the queue uncounted."""
        self._stopping = True
        for pid in stop_worker_processes([p for p in self._procs if p is not None], timeout):
            self._release(pid, count_attempt=False)

    def _release(self, pid: int, *, count_attempt: bool = True) -> None:
        try:
            release_worker_jobs(
                self._sessions,
                worker_id_for(pid),
                self._config.worker.max_attempts,
                count_attempt=count_attempt,
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
    stop = threading.Event()
    reload_requested = threading.Event()

    def on_stop(signum: int, _frame: object) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    handlers = {
        signal.SIGTERM: on_stop,
        signal.SIGINT: on_stop,
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
    finally:
        workers.stop()
        engine.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("workers_stopped")
    return 0
