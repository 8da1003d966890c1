"""``/healthz`` of a running ``triage serve`` whose inference worker cannot run."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from daemon_proc import Daemon
from support import free_port


def _healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_healthz_is_degraded_while_the_only_worker_crash_loops(tmp_path: Path) -> None:
    web_port = free_port()
    # A bundle folder that is not there: the worker dies at start-up, every time.
    daemon = Daemon(
        tmp_path,
        worker={"processes": 1},
        model={"bundle": str(tmp_path / "no-bundle")},
        web={"port": web_port},
    ).start()
    try:
        deadline = time.monotonic() + 120
        while True:
            code, body = _healthz(web_port)
            if body["status"] != "ok" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        # Degraded from the worker's first death: nothing is queued, so the old check
        # (jobs waiting longer than a heartbeat window) would have said "ok" for ever.
        assert (code, body["status"]) == (503, "degraded"), body
        assert body["worker_processes"]["expected"] == 1
        assert body["worker_processes"]["up"] == 0
        assert body["queued_jobs"] == 0
        assert daemon.events("worker_process_died")
        # It stays degraded through the restarts that follow.
        for _ in range(10):
            code, body = _healthz(web_port)
            assert (code, body["status"]) == (503, "degraded"), body
            time.sleep(0.3)
    finally:
        assert daemon.stop() == 0
