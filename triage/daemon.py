"""``triage serve``: the receiver, the scheduler and the inference workers, stopped by a
signal; SIGHUP reloads the thresholds (see :mod:`triage.reload`).

With ``receiver.processes: 1`` the receiver runs in this process. With N > 1 it runs in
N child processes that share the port (SO_REUSEPORT), because one Python process
decodes DIMSE messages, parses headers and hashes UIDs on one core only (the GIL);
this process keeps the scheduler, restarts a receiver process that dies, and stops
them all on SIGTERM.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from triage.analyse.processes import WorkerProcesses
from triage.config import Config, ReceiverConfig
from triage.db import create_db_engine, migrate, session_factory
from triage.dispatch import Dispatcher
from triage.errors import TriageError
from triage.lockfile import DataDirLock
from triage.logs import configure_logging, get_logger
from triage.receive.recorder import InstanceRecorder
from triage.receive.scp import Receiver, StoreTarget
from triage.reload import apply_reload, pid_file, remove_pid_file, write_pid_file
from triage.scheduler import build_scheduler, run_now
from triage.signal_event import SignalEvent
from triage.storage.outbox import recover as recover_outbox
from triage.storage.reconcile import reconcile
from triage.supervisor import DELIVERIES_STORED, RELOAD, ParentWatch, Restarts, Supervisor
from triage.web import WebServer, start_web

log = get_logger(__name__)

# How long a receiver process may take to import, open the database and listen.
_START_TIMEOUT = 60.0
# A receiver process that dies within 10 s of its start is restarted after a growing
# delay (1 s, doubling up to 30 s), so a process that cannot start (a broken TLS key,
# say) does not spin; one that ran longer is restarted at once.
_RESTARTS = Restarts(stable_after=10.0, first_backoff=1.0, max_backoff=30.0)


def prepare_data_dir(config: Config) -> None:
    """Create data_dir and the spool readable by the service user only."""
    for path in (config.data_dir, config.spool_dir):
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.chmod(0o700)


def _process_receiver_config(cfg: ReceiverConfig, port: int) -> ReceiverConfig:
    """One receiver process's share: the bound port and its part of max_associations."""
    return cfg.model_copy(
        update={"port": port, "max_associations": math.ceil(cfg.max_associations / cfg.processes)}
    )


def _run_receiver_process(
    config: Config, port: int, index: int, log_format: str, log_level: str, ready: Any
) -> None:
    """The body of one receiver process: its own engine, recorder and listening socket."""
    # Ctrl-C reaches the whole process group; only the parent decides when to stop, and
    # then sends SIGTERM, so associations in flight are not cut by a stray SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = SignalEvent()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    configure_logging(log_format, log_level)
    plog = get_logger(__name__, pid=os.getpid(), receiver_process=index)
    parent = ParentWatch()

    cfg = _process_receiver_config(config.receiver, port)
    engine = create_db_engine(config.database_url, config.database.busy_timeout_ms)
    recorder = InstanceRecorder(session_factory(engine))
    try:
        receiver = Receiver(
            cfg, StoreTarget(config.spool_dir, cfg.min_free_disk_mb, recorder), reuse_port=True
        )
    except (TriageError, OSError) as err:
        plog.error("receiver_start_failed", error=str(err))
        recorder.close()
        engine.dispose()
        raise SystemExit(1) from err
    # Logged before the parent hears of it, so that "serving" follows every child's line.
    plog.info("receiver_started", port=receiver.port, max_associations=cfg.max_associations)
    ready.set()
    try:
        while not stop.wait(0.5):
            # If the parent was killed outright, nobody would ever stop us: an orphan
            # would hold the port and the database.
            if parent.gone():
                plog.warning("receiver_parent_gone")
                break
    finally:
        receiver.stop()
        recorder.close()
        engine.dispose()
        plog.info("receiver_stopped")


class ReceiverProcesses:
    """``receiver.processes`` receiver processes sharing one port, kept alive by the parent.

    The parent binds the address first (with SO_REUSEPORT, without listening), so that
    port 0 resolves to one port that every child then joins, and so that the port stays
    ours while a child restarts. A socket that does not listen gets no connections.
    """

    def __init__(self, config: Config, log_format: str, log_level: str) -> None:
        if not hasattr(socket, "SO_REUSEPORT"):
            raise TriageError(
                "receiver.processes > 1 needs SO_REUSEPORT, which this platform lacks; "
                "set receiver.processes to 1"
            )
        self._config = config
        self._log_format = log_format
        self._log_level = log_level
        # spawn, not fork: the parent already runs threads (the scheduler, the
        # recorder), and a forked child would inherit their locks and the engine's
        # connections, which must be one per process.
        self._ctx = multiprocessing.get_context("spawn")
        cfg = config.receiver
        try:
            info = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM)[0]
        except OSError as err:
            raise _listen_error("DICOM (receiver)", cfg.host, cfg.port, err) from err
        self._socket = socket.socket(info[0], socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self._socket.bind(info[4])
        except OSError as err:
            self._socket.close()
            raise TriageError(
                f"cannot bind the receiver to {cfg.host}:{cfg.port}: {err.strerror or err}; "
                "is another daemon running, or is receiver.port wrong?"
            ) from err
        self.port = int(self._socket.getsockname()[1])
        self._count = cfg.processes
        # Held until the process is replaced: a spawned child unpickles it after start(),
        # and the semaphore behind it is unlinked once the parent drops the last reference.
        self._ready: dict[int, Any] = {}
        self._supervisor = Supervisor("receiver", self._spawn, _RESTARTS)

    def _spawn(self, index: int) -> SpawnProcess:
        ready = self._ctx.Event()
        process = self._ctx.Process(
            target=_run_receiver_process,
            args=(self._config, self.port, index, self._log_format, self._log_level, ready),
            name=f"triage-receiver-{index}",
        )
        process.start()
        self._ready[index] = ready
        return process

    def start(self) -> None:
        """Start every receiver process and wait until each listens.

        Raises
        ------
        TriageError
            If a receiver process exits or hangs before it listens.
        """
        processes = self._supervisor.start(self._count)
        deadline = time.monotonic() + _START_TIMEOUT
        for index, process in enumerate(processes):
            while not self._ready[index].wait(0.1):
                if not process.is_alive() or time.monotonic() > deadline:
                    self.stop()
                    raise TriageError(
                        f"receiver process {index} did not start "
                        f"(exit code {process.exitcode}); its log lines above say why"
                    )

    def check(self) -> None:
        """Restart any receiver process that has died; called periodically by the parent."""
        self._supervisor.check()

    def pids(self) -> list[int]:
        """The live receiver processes' ids."""
        return self._supervisor.pids()

    def stop(self) -> None:
        """SIGTERM every receiver process; each lets its associations finish first."""
        # Each child waits up to shutdown_timeout for its associations, then aborts
        # them; the margin covers closing its database engine.
        self._supervisor.stop(self._config.receiver.shutdown_timeout + 10.0)
        self._socket.close()


def serve(
    config: Config,
    ready: threading.Event | None = None,
    *,
    log_format: str | None = None,
    log_level: str | None = None,
    config_path: Path | None = None,
) -> int:
    """Run the daemon until SIGTERM or SIGINT; return the process exit code.

    ``log_format`` and ``log_level`` are what this process logs with (the command
    line may override the configuration); receiver processes log the same way.
    ``config_path`` is the file ``config`` came from: with it, ``worker.processes``
    inference workers start (they read the file themselves) and SIGHUP reloads the
    thresholds from it; without it (tests), neither happens.

    Raises
    ------
    AlreadyRunningError
        If another daemon holds ``data_dir``; nothing of it was touched.
    TriageError
        If it cannot start: ``data_dir`` unusable, an address taken or unresolvable.
    """
    # Before anything in data_dir is touched: reconciliation, migrations, the pid file.
    with DataDirLock(config.data_dir):
        return _serve(
            config, ready, log_format=log_format, log_level=log_level, config_path=config_path
        )


def _listen_error(what: str, host: str, port: int, err: OSError) -> TriageError:
    """The one-line reason why a listening socket could not be opened."""
    if isinstance(err, socket.gaierror):
        return TriageError(f"{what} host {host!r} cannot be resolved: {err.strerror or err}")
    return TriageError(
        f"cannot listen for {what} on {host} port {port}: {err.strerror or err}; "
        "is another program using it, or is the address wrong?"
    )


class _Requests:
    """What signals ask of the main loop. The handlers only set flags: what they ask
    for reads files and writes the database, which a signal handler must not do in the
    middle of whatever the main thread was doing. They take no lock and do not log (see
    :mod:`triage.signal_event`). The main loop waits on ``wake``."""

    def __init__(self) -> None:
        self.stop = SignalEvent()
        self.wake = SignalEvent()
        self.reload = SignalEvent()
        self.dispatch = SignalEvent()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """SIGTERM and SIGINT stop; :data:`RELOAD` reloads the thresholds; a worker's
        :data:`DELIVERIES_STORED` dispatches at once."""

        def on_stop(signum: int, _frame: FrameType | None) -> None:
            self.stop.set(signum)
            self.wake.set()

        def asking(flag: SignalEvent) -> Callable[[int, FrameType | None], None]:
            def handler(_signum: int, _frame: FrameType | None) -> None:
                flag.set()
                self.wake.set()

            return handler

        handlers = {
            signal.SIGTERM: on_stop,
            signal.SIGINT: on_stop,
            RELOAD: asking(self.reload),
            DELIVERIES_STORED: asking(self.dispatch),
        }
        self._previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Receiving:
    """The DICOM receiver: in this process, or in ``receiver.processes`` children."""

    def __init__(
        self, config: Config, sessions: sessionmaker[Session], log_format: str, log_level: str
    ) -> None:
        self.recorder: InstanceRecorder | None = None
        self.receiver: Receiver | None = None
        self.children: ReceiverProcesses | None = None
        if config.receiver.processes > 1:
            self.children = ReceiverProcesses(config, log_format, log_level)
            self.children.start()
            self.port = self.children.port
            return
        self.recorder = InstanceRecorder(sessions)
        try:
            self.receiver = Receiver(
                config.receiver,
                StoreTarget(config.spool_dir, config.receiver.min_free_disk_mb, self.recorder),
            )
        except OSError as err:
            self.recorder.close()
            cfg = config.receiver
            raise _listen_error("DICOM (receiver)", cfg.host, cfg.port, err) from err
        self.port = self.receiver.port

    def check(self) -> None:
        """Restart receiver processes that died."""
        if self.children is not None:
            self.children.check()

    def stop(self) -> None:
        """Stop receiving; associations in flight finish first."""
        if self.receiver is not None:
            self.receiver.stop()
        if self.children is not None:
            self.children.stop()
        if self.recorder is not None:
            self.recorder.close()


def _open_database(config: Config) -> tuple[Engine, sessionmaker[Session]]:
    """Make data_dir, migrate the schema, and settle what a crash left (the spool's
    rows and files, running jobs, outbox folders)."""
    try:
        prepare_data_dir(config)
    except OSError as err:
        raise TriageError(
            f"cannot prepare data_dir {config.data_dir}: {err.strerror or err}"
        ) from err
    engine = create_db_engine(config.database_url, config.database.busy_timeout_ms)
    migrate(engine)
    sessions = session_factory(engine)
    reconcile(sessions, config.spool_dir)
    recover_outbox(sessions, config.data_dir, config.worker.lease_seconds)
    return engine, sessions


def _serve(
    config: Config,
    ready: threading.Event | None,
    *,
    log_format: str | None,
    log_level: str | None,
    config_path: Path | None,
) -> int:
    engine, sessions = _open_database(config)
    workers: WorkerProcesses | None = None
    dispatcher = Dispatcher(sessions, config)
    scheduler = build_scheduler(
        sessions, config, lambda: workers.wake() if workers else None, dispatcher
    )
    requests = _Requests()
    requests.install()
    pid_path = pid_file(config)
    write_pid_file(pid_path)
    web: WebServer | None = None
    receiving: _Receiving | None = None
    try:
        receiving = _Receiving(
            config, sessions, log_format or config.logging.format, log_level or config.logging.level
        )
        scheduler.start()
        web = start_web(config, sessions, lambda: workers.supervision() if workers else None)
        if config_path is not None and config.worker.processes > 0:
            workers = WorkerProcesses(
                config_path,
                config,
                sessions,
                log_format=log_format,
                log_level=log_level,
                notify_parent=True,
            )
            workers.start(config.worker.processes)
        log.info(
            "serving",
            ae_title=config.receiver.ae_title,
            host=config.receiver.host,
            port=receiving.port,
            receiver_processes=config.receiver.processes,
            web=web.url,
            worker_processes=config.worker.processes if workers is not None else 0,
            pid=os.getpid(),
            data_dir=str(config.data_dir),
            database=engine.url.render_as_string(hide_password=True),
        )
        if ready is not None:
            ready.set()
        _main_loop(requests, scheduler, receiving, workers, config, config_path, sessions)
        if requests.stop.signum is not None:
            log.info("stop_requested", signal=signal.Signals(requests.stop.signum).name)
    finally:
        if receiving is not None:
            receiving.stop()
        if workers is not None:
            workers.stop()
        if web is not None:
            web.stop()
        if scheduler.running:
            scheduler.shutdown(wait=True)
        dispatcher.close()
        engine.dispose()
        requests.restore()
        remove_pid_file(pid_path)
        log.info("stopped")
    return 0


def _main_loop(
    requests: _Requests,
    scheduler: BackgroundScheduler,
    receiving: _Receiving,
    workers: WorkerProcesses | None,
    config: Config,
    config_path: Path | None,
    sessions: sessionmaker[Session],
) -> None:
    """Until a stop is asked for: dispatch, reload and restart dead children on request
    or every half second."""
    while not requests.stop.is_set():
        requests.wake.wait(0.5)
        requests.wake.clear()
        if requests.stop.is_set():
            break
        if requests.dispatch.is_set():
            requests.dispatch.clear()
            run_now(scheduler, "dispatch")
        receiving.check()
        if workers is not None:
            workers.check()
        if requests.reload.is_set() and config_path is not None:
            requests.reload.clear()
            reloaded = apply_reload(config_path, config, sessions)
            if reloaded is not config and workers is not None:
                workers.reload()
            config = reloaded
