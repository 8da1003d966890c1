"""``triage serve`` start-up: one daemon per data folder, and each start-up failure is
one clear line (not a traceback) with the exit code that says what happened."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_proc import Daemon
from sqlalchemy import select
from support import dcmtk, free_port, open_db

from triage.config import load_config
from triage.db import Job, JobState, Series, Study
from triage.storage.spool import TEMP_SUFFIX


def _serve(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triage.cli", "serve", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _plain_lines(stderr: str) -> list[str]:
    """The lines that are not JSON log records: what a person is meant to read."""
    plain = []
    for line in stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            plain.append(line)
    return plain


def test_a_second_serve_on_the_same_config_exits_2_and_leaves_the_first_alone(
    tmp_path: Path,
) -> None:
    first = Daemon(tmp_path).start()
    try:
        var = tmp_path / "var"
        pid_before = (var / "triage.pid").read_text()
        # What reconciliation would destroy: a file being written, and a running job.
        in_flight = var / "spool" / f"1.2.3{TEMP_SUFFIX}"
        in_flight.write_bytes(b"half an instance")
        sessions = open_db(load_config(first.config_path))
        with sessions.begin() as session:
            series = Series(
                study=Study(study_instance_uid="1.2.3"),
                series_instance_uid="1.2.3.4",
                modality="CT",
            )
            session.add(Job(series=series, state=JobState.RUNNING, worker_id="w1"))

        second = _serve(first.config_path)

        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        (line,) = _plain_lines(second.stderr)
        assert line.startswith("error: another triage serve is already running on data_dir")
        assert f"pid {pid_before.strip()}" in line
        assert second.stdout == ""
        # Nothing of the first was touched.
        assert (var / "triage.pid").read_text() == pid_before
        assert in_flight.read_bytes() == b"half an instance"
        with sessions() as session:
            assert session.scalars(select(Job.state)).all() == [JobState.RUNNING]
        assert first.proc is not None and first.proc.poll() is None
        echo = subprocess.run([dcmtk("echoscu"), "127.0.0.1", str(first.port)], timeout=30)
        assert echo.returncode == 0
        # `triage reload` still finds the first daemon by its pid file.
        reload = first.cli("reload")
        assert reload.returncode == 0, reload.stderr
    finally:
        assert first.stop() == 0
    # Once the first has stopped, the lock is free: a new daemon starts.
    again = Daemon(tmp_path).start()
    assert again.stop() == 0


def _config(tmp_path: Path, **sections: Any) -> Path:
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "var"),
        "receiver": {"port": free_port(), "min_free_disk_mb": 0},
        "web": {"port": 0},
        "worker": {"processes": 0},
        "logging": {"format": "json"},
    }
    for name, value in sections.items():
        data[name] = {**data.get(name, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def taken_port() -> Any:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("receiver port in use", "cannot listen for DICOM (receiver) on 127.0.0.1 port"),
        ("web port in use", "the web server cannot listen on 127.0.0.1 port"),
        ("receiver host does not resolve", "DICOM (receiver) host 'nohost.invalid' cannot be"),
        ("data_dir not creatable", "cannot use data_dir /proc/triage"),
        ("data_dir is a file", "cannot use data_dir"),
        ("database host does not resolve", "failed to resolve host 'nohost.invalid'"),
    ],
)
def test_each_start_up_failure_is_one_clear_line(
    tmp_path: Path, taken_port: int, case: str, expected: str
) -> None:
    sections: dict[str, Any] = {
        "receiver port in use": {"receiver": {"port": taken_port}},
        "web port in use": {"web": {"port": taken_port}},
        "receiver host does not resolve": {"receiver": {"host": "nohost.invalid"}},
        "data_dir not creatable": {"data_dir": "/proc/triage"},
        "data_dir is a file": {"data_dir": str(tmp_path / "file" / "var")},
        "database host does not resolve": {
            "database": {"url": "postgresql+psycopg://triage@nohost.invalid/triage"}
        },
    }[case]
    (tmp_path / "file").write_text("not a folder")

    out = _serve(_config(tmp_path, **sections))

    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    (line,) = _plain_lines(out.stderr)
    assert line.startswith("error: ") and expected in line, line
