"""Every line the daemon writes is one JSON object, and none quotes a header value."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from support import open_db

from triage.config import load_config

WARNING_SCRIPT = """
import warnings
from pydicom import config
from pydicom.valuerep import validate_value
from highdicom.valuerep import check_person_name
from triage.logs import configure_logging

warnings.simplefilter("always")
configure_logging("json", "INFO")
validate_value("DA", "1932-02-15", config.WARN)  # pydicom: logger and warning
check_person_name("DOE JOHN Q")  # highdicom: a warning
"""


def test_library_warnings_are_one_json_line_each_without_their_text() -> None:
    run = subprocess.run(
        [sys.executable, "-c", WARNING_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    # One line each, although pydicom also sent its warning to its logger.
    assert [e["event"] for e in events] == ["library_warning", "library_warning"]
    assert events[0]["origin"].startswith("pydicom/")
    assert all(e["category"] == "UserWarning" for e in events)
    assert "1932" not in run.stderr and "DOE" not in run.stderr


def test_a_worker_writes_only_json_and_says_once_that_it_has_no_gpu(tmp_path: Path) -> None:
    from model.bundle import init_bundle

    bundle = tmp_path / "bundle"
    init_bundle(bundle, backbone="small", input_size=32, num_slices=16, seed=0)
    data = {
        "data_dir": str(tmp_path / "var"),
        "model": {"bundle": str(bundle)},
        "worker": {"processes": 1},
        "logging": {"format": "json", "level": "INFO"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    open_db(load_config(path))
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "triage.cli", "worker", "--config", str(path)],
            stdout=log,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + 180
            while '"worker_started"' not in log_path.read_text(errors="replace"):
                assert proc.poll() is None, log_path.read_text(errors="replace")
                assert time.monotonic() < deadline, log_path.read_text(errors="replace")
                time.sleep(0.5)
            time.sleep(1)  # anything TensorFlow writes after the start
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    text = log_path.read_text(errors="replace")
    assert all(line.startswith("{") for line in text.splitlines()), text
    events = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert "cuInit" not in text
    (started,) = [e for e in events if e["event"] == "worker_started"]
    # The handler only noted the signal; the loop logged it.
    assert [e["signal"] for e in events if e["event"] == "stop_requested"] == ["SIGTERM"]
    no_gpu = [e for e in events if e.get("message") == "no GPU, using the CPU"]
    assert len(no_gpu) == (1 if started["device"] == "CPU" else 0)
