"""``triage serve`` as a process: send, status, no patient data in logs, clean stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from daemon_proc import Daemon
from dicom_factory import ACCESSION, BIRTH_DATE, PATIENT_ID, PATIENT_NAME, write_series
from support import dcmtk

from triage.supervisor import DELIVERIES_STORED, RELOAD


def _triage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triage.cli", *args], capture_output=True, text=True, timeout=120
    )


def _status(daemon: Daemon) -> dict:
    out = daemon.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _wait(daemon: Daemon, predicate, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = _status(daemon)
        if predicate(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


def test_send_status_and_no_patient_data_in_any_log(tmp_path: Path) -> None:
    daemon = Daemon(
        tmp_path,
        series={
            "stable_seconds": 0.5,
            "sweep_interval_seconds": 0.2,
            "selection": {"min_slices": 10},
        },
    ).start()
    study, ctpa, _ = write_series(tmp_path / "study" / "ctpa", 12)
    _, localizer, _ = write_series(
        tmp_path / "study" / "scout",
        1,
        study_uid=study,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    not_dicom = tmp_path / "study" / "README.txt"
    not_dicom.write_text("not an image")

    sent = _triage(
        "send", "--host", "127.0.0.1", "--port", str(daemon.port), str(tmp_path / "study")
    )
    # The text file is not DICOM: skipped with one note, not a failure.
    assert sent.returncode == 0, sent.stderr
    assert "skipped 1 non-DICOM file(s): README.txt" in sent.stdout
    assert "sent 13, failed 0" in sent.stdout

    # dcmtk's storescu, as a real PACS would forward.
    extra = write_series(tmp_path / "more", 10)[2]
    scu = subprocess.run(
        [dcmtk("storescu"), "-aec", "TRIAGE", "127.0.0.1", str(daemon.port), *map(str, extra)],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=60,
    )
    assert scu.returncode == 0, scu.stdout + scu.stderr

    status = _wait(
        daemon,
        lambda s: (
            s["counts"]["series"].get("receiving", 0) == 0
            and sum(s["counts"]["series"].values()) == 3
        ),
    )
    assert status["counts"]["studies"] == 2
    assert status["counts"]["instances"] == 23
    by_uid = {s["series_instance_uid"]: s for st in status["studies"] for s in st["series"]}
    assert by_uid[ctpa]["state"] == "queued"
    assert by_uid[ctpa]["job"]["state"] == "queued"
    assert by_uid[localizer]["state"] == "skipped"
    assert "LOCALIZER" in by_uid[localizer]["skip_reason"]

    text = daemon.cli("status")
    assert text.returncode == 0
    assert "skipped (image type is LOCALIZER" in text.stdout
    assert "jobs:   queued 2" in text.stdout

    assert daemon.stop() == 0
    logs = daemon.log_text() + sent.stdout + sent.stderr + text.stdout + text.stderr
    assert "instance_stored" in logs  # DEBUG level: every instance was logged
    assert study in logs
    for value in (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, ACCESSION, "ZZTESTNAME", "LEAKCHECK"):
        assert value not in logs, f"{value} leaked into a log line"
    for line in daemon.log_text().splitlines():
        json.loads(line)  # every line is JSON


def test_sigterm_lets_the_association_in_flight_finish(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path).start()
    files = write_series(tmp_path / "big", 60, rows=256, columns=256)[2]
    scu = subprocess.Popen(
        [
            dcmtk("storescu"),
            "-v",
            "-aec",
            "TRIAGE",
            "127.0.0.1",
            str(daemon.port),
            *map(str, files),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert scu.stdout is not None
    for line in scu.stdout:
        if "Received Store Response (Success)" in line:
            break
    assert daemon.proc is not None
    daemon.proc.send_signal(15)
    rest = scu.stdout.read()
    assert scu.wait(60) == 0, rest
    assert daemon.proc.wait(60) == 0
    assert rest.count("Received Store Response (Success)") == 59
    db_files = list((tmp_path / "var" / "spool").rglob("*.dcm"))
    assert len(db_files) == 60
    log = daemon.log_text()
    assert '"event": "stopped"' in log
    # A new association after the stop is refused: nothing listens any more.
    echo = subprocess.run([dcmtk("echoscu"), "127.0.0.1", str(daemon.port)], capture_output=True)
    assert echo.returncode != 0


def test_data_dir_and_database_are_private(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path).start()
    daemon.stop()
    var = tmp_path / "var"
    assert var.stat().st_mode & 0o777 == 0o700
    assert (var / "spool").stat().st_mode & 0o777 == 0o700
    assert (var / "triage.db").stat().st_mode & 0o777 == 0o600


def test_send_reports_a_rejected_association(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, receiver={"allowed_calling_aets": ["PACS"]}).start()
    files = write_series(tmp_path / "s", 2)[2]
    out = _triage(
        "send",
        "--host",
        "127.0.0.1",
        "--port",
        str(daemon.port),
        "--calling-aet",
        "NOTALLOWED",
        *map(str, files),
    )
    assert out.returncode == 1
    # Said once, with the daemon's reason, not once per file.
    assert out.stderr.count("rejected the association") == 1
    assert "Calling AE title not recognised" in out.stderr
    assert "2 files not sent" in out.stderr
    ok = _triage(
        "send",
        "--host",
        "127.0.0.1",
        "--port",
        str(daemon.port),
        "--calling-aet",
        "PACS",
        *map(str, files),
    )
    assert ok.returncode == 0, ok.stderr
    daemon.stop()
    assert '"event": "association_rejected"' in daemon.log_text()
    assert "NOTALLOWED" in daemon.log_text()


def test_a_burst_of_signals_neither_kills_nor_wedges_the_daemon(tmp_path: Path) -> None:
    # Workers send DELIVERIES_STORED after each result and admins RELOAD; thousands of
    # them must leave the daemon serving and stoppable. The handlers used to set
    # threading.Events: one that ran while the main loop held an event's lock waited for
    # itself forever (and a burst overflowed the stack), and SIGTERM was never answered.
    daemon = Daemon(tmp_path).start()
    assert daemon.proc is not None
    deadline = time.monotonic() + 5
    sent = 0
    while time.monotonic() < deadline:
        os.kill(daemon.proc.pid, DELIVERIES_STORED if sent % 10 else RELOAD)
        sent += 1
        time.sleep(0.0005)
    assert daemon.proc.poll() is None, daemon.log_text()[-3000:]
    echo = subprocess.run(
        [dcmtk("echoscu"), "-aec", "TRIAGE", "127.0.0.1", str(daemon.port)], capture_output=True
    )
    assert echo.returncode == 0, echo.stderr
    assert daemon.stop() == 0
    log = daemon.log_text()
    assert "Traceback" not in log
    assert [e["signal"] for e in daemon.events("stop_requested")] == ["SIGTERM"]
    assert daemon.events("stopped")
