"""The sweep scheduler: a stop request that arrives mid-sweep ends it, and waits for it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import make_config, open_db

from triage import scheduler as sweeps


def test_shutdown_mid_sweep_waits_for_the_sweep_and_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The completeness sweep brings its next run forward through the scheduler's job
    store, which APScheduler's own shutdown(wait=True) holds locked while it waits for
    running jobs: the daemon hung after SIGTERM when a sweep was running."""
    started, finished = threading.Event(), threading.Event()

    def slow_sweep(*_: object) -> bool:
        started.set()
        time.sleep(0.5)  # the shutdown below begins while the sweep runs
        finished.set()
        return False

    def soon(*_: object) -> datetime:
        # A series turns quiet soon: the sweep moves its next run forward.
        return datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=1)

    monkeypatch.setattr(sweeps, "sweep_series", slow_sweep)
    monkeypatch.setattr(sweeps, "next_series_due", soon)
    config = make_config(tmp_path, series={"sweep_interval_seconds": 3600})
    scheduler = sweeps.build_scheduler(open_db(config), config)
    scheduler.start()
    sweeps.run_now(scheduler, "completeness")
    assert started.wait(10)
    stopper = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive(), "shutdown deadlocked on the running sweep"
    assert finished.is_set(), "shutdown(wait=True) returned before the sweep ended"
