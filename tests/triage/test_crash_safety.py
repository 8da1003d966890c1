"""kill -9 mid-transfer loses nothing that was acknowledged (dcmtk storescu as the PACS)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

from daemon_proc import Daemon
from dicom_factory import write_series
from pydicom import dcmread
from support import dcmtk


def _storescu(port: int, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            dcmtk("storescu"),
            "-v",
            "-aet",
            "PACS",
            "-aec",
            "TRIAGE",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def _wait_for_series(daemon: Daemon, count: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        out = daemon.cli("status", "--json")
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        queued = status["counts"]["series"].get("queued", 0)
        if queued == count or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


def test_sigkill_mid_transfer_loses_nothing_acknowledged(tmp_path: Path) -> None:
    files: list[Path] = []
    for k in range(3):
        files += write_series(tmp_path / "src" / str(k), 40, rows=256, columns=256)[2]
    daemon = Daemon(
        tmp_path,
        series={
            "stable_seconds": 1,
            "sweep_interval_seconds": 0.3,
            "selection": {"min_slices": 40},
        },
    ).start()

    scu = _storescu(daemon.port, files)
    acknowledged: list[Path] = []
    current: Path | None = None
    assert scu.stdout is not None
    for line in scu.stdout:
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: ").strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acknowledged.append(current)
            if len(acknowledged) == 50:
                daemon.kill()  # mid-transfer: storescu is still sending
                break
    scu.stdout.read()
    scu.wait(30)
    assert len(acknowledged) == 50
    assert scu.returncode != 0  # storescu saw the connection drop

    daemon.start()  # reconciliation runs at start-up
    db = sqlite3.connect(tmp_path / "var" / "triage.db")
    rows = dict(db.execute("SELECT sop_instance_uid, file_path FROM instances WHERE missing = 0"))
    spool = tmp_path / "var" / "spool"
    for path in acknowledged:
        sop = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert sop in rows, f"acknowledged {sop} has no row after restart"
        stored = spool / rows[sop]
        assert stored.read_bytes()[-1000:] == path.read_bytes()[-1000:]
    assert not list(spool.rglob("*.tmp"))

    # The PACS re-sends everything; all three series complete and are queued.
    resend = _storescu(daemon.port, files)
    out, _ = resend.communicate(timeout=120)
    assert resend.returncode == 0, out
    status = _wait_for_series(daemon, 3)
    assert status["counts"]["series"] == {"queued": 3}
    assert status["counts"]["instances"] == 120
    assert status["counts"]["instances_missing"] == 0
    assert daemon.stop() == 0
