"""``receiver.processes: 2``: one port, two receiver processes, restarted when killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon_proc import Daemon
from dicom_factory import write_series
from support import dcmtk

SENDERS = 4
PER_SERIES = 8


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # A zombie has exited; its parent has not reaped it yet.
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _storescu(port: int, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [dcmtk("storescu"), "-aec", "TRIAGE", "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def _finish(scu: subprocess.Popen[str]) -> None:
    out, _ = scu.communicate(timeout=60)
    assert scu.returncode == 0, out


def _accepting_pids(daemon: Daemon) -> set[int]:
    return {e["pid"] for e in daemon.events("association_accepted")}


def test_two_processes_share_the_port_and_a_killed_one_is_replaced(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, receiver={"processes": 2}).start()
    try:
        _wait_for("the daemon to serve", lambda: daemon.events("serving"))
        children = {e["pid"] for e in daemon.events("receiver_started")}
        assert len(children) == 2
        assert daemon.proc is not None and daemon.proc.pid not in children

        # K concurrent senders, one distinct series each.
        series = [write_series(tmp_path / f"s{i}", PER_SERIES) for i in range(SENDERS)]
        scus = [_storescu(daemon.port, files) for _, _, files in series]
        for scu in scus:
            _finish(scu)

        # The kernel picks a listener per connection by hashing the address pair, so
        # four associations can all land on one process (1 in 8); a few more C-ECHOs
        # make it practically certain that both served.
        for _ in range(40):
            if len(_accepting_pids(daemon)) >= 2:
                break
            echo = subprocess.run(
                [dcmtk("echoscu"), "-aec", "TRIAGE", "127.0.0.1", str(daemon.port)],
                capture_output=True,
            )
            assert echo.returncode == 0
        assert _accepting_pids(daemon) == children

        status = json.loads(daemon.cli("status", "--json").stdout)
        assert status["counts"]["instances"] == SENDERS * PER_SERIES
        assert status["counts"]["series"] == {"receiving": SENDERS}
        spool = tmp_path / "var" / "spool"
        for study, series_uid, files in series:
            on_disk = list((spool / study / series_uid).glob("*.dcm"))
            assert len(on_disk) == len(files)

        # A receiver process that dies is replaced, and the port keeps working.
        victim = min(children)
        os.kill(victim, signal.SIGKILL)
        _wait_for("the dead process to be reaped", lambda: not _alive(victim))
        replacement = _wait_for(
            "a replacement receiver process",
            lambda: {e["pid"] for e in daemon.events("receiver_started")} - children,
        )
        assert len(replacement) == 1
        assert daemon.events("receiver_process_died")[0]["pid"] == victim
        late = write_series(tmp_path / "late", PER_SERIES)
        _finish(_storescu(daemon.port, late[2]))
        status = json.loads(daemon.cli("status", "--json").stdout)
        assert status["counts"]["instances"] == (SENDERS + 1) * PER_SERIES

        survivors = (children - {victim}) | replacement
        assert daemon.stop() == 0
        for pid in survivors:
            # Not reparented and still running: the parent waited for its children.
            assert not _alive(pid), f"receiver process {pid} outlived the daemon"
        assert len(daemon.events("receiver_stopped")) == 2
        log = daemon.log_text()
        assert '"event": "stopped"' in log
        for line in log.splitlines():
            json.loads(line)  # children log JSON lines too
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
