"""``triage serve``: the receiver and the scheduler in one process, stopped by a signal."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from triage.config import Config
from triage.db import create_db_engine, migrate, session_factory
from triage.logs import get_logger
from triage.reconcile import reconcile
from triage.recorder import InstanceRecorder
from triage.scheduler import build_scheduler
from triage.scp import Receiver, StoreTarget

log = get_logger(__name__)


def prepare_data_dir(config: Config) -> None:
    """Create data_dir and the spool readable by the service user only."""
    for path in (config.data_dir, config.spool_dir):
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.chmod(0o700)


def serve(config: Config, ready: threading.Event | None = None) -> int:
    """Run the daemon until SIGTERM or SIGINT; return the process exit code."""
    prepare_data_dir(config)
    engine = create_db_engine(config.database_url, config.database.busy_timeout_ms)
    migrate(engine)
    sessions = session_factory(engine)
    reconcile(sessions, config.spool_dir)

    recorder = InstanceRecorder(sessions)
    scheduler = build_scheduler(sessions, config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    receiver = Receiver(
        config.receiver,
        StoreTarget(config.spool_dir, config.receiver.min_free_disk_mb, recorder),
    )
    scheduler.start()
    log.info(
        "serving",
        ae_title=config.receiver.ae_title,
        host=config.receiver.host,
        port=receiver.port,
        data_dir=str(config.data_dir),
        database=engine.url.render_as_string(hide_password=True),
    )
    if ready is not None:
        ready.set()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        receiver.stop()
        scheduler.shutdown(wait=True)
        recorder.close()
        engine.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("stopped")
    return 0
