"""`triage worker` on the JAX backend: it says so, and no TensorFlow enters its process.

CI installs JAX's CPU wheel; the same test for PyTorch is left out of CI because its wheel
pulls several GB of CUDA libraries (``benchmarks/gpu_check.sh`` runs a torch worker on
the GPU machine), and runs wherever torch is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from support import open_db

from triage.config import load_config
from triage.db.models import WorkerHeartbeat

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(
            "jax",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("jax") is None, reason="JAX is not installed"
            ),
        ),
        pytest.param(
            "torch",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("torch") is None,
                reason="PyTorch is not installed: CI leaves it out (its wheel pulls several "
                "GB of CUDA libraries); benchmarks/gpu_check.sh runs a torch worker",
            ),
        ),
    ],
)
def test_a_worker_on_another_backend_starts_on_it_without_tensorflow(
    tmp_path: Path, backend: str
) -> None:
    from model.bundle import init_bundle

    bundle = tmp_path / "bundle"
    init_bundle(bundle, backbone="small", input_size=32, num_slices=16, seed=0)
    data = {
        "data_dir": str(tmp_path / "var"),
        "model": {"bundle": str(bundle), "backend": backend, "device": "cpu"},
        "worker": {"processes": 1},
        "logging": {"format": "json", "level": "INFO"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    sessions = open_db(load_config(path))
    log_path = tmp_path / "worker.log"
    # KERAS_BACKEND says tensorflow: the YAML must win in the worker process.
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(ROOT)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "triage.cli", "worker", "--config", str(path)],
            stdout=log,
            stderr=log,
            env=env,
        )
        try:
            deadline = time.monotonic() + 240
            while '"worker_started"' not in log_path.read_text(errors="replace"):
                assert proc.poll() is None, log_path.read_text(errors="replace")
                assert time.monotonic() < deadline, log_path.read_text(errors="replace")
                time.sleep(0.5)
            with sessions() as session:
                beat = session.scalars(select(WorkerHeartbeat)).one()
            # The worker process's own memory map: no TensorFlow library was loaded.
            maps = Path(f"/proc/{beat.pid}/maps").read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    (started,) = [e for e in events if e["event"] == "worker_started"]
    assert (started["backend"], started["device"]) == (backend, "CPU")
    assert (beat.backend, beat.device) == (backend, "CPU")
    # The map is the worker's, where the backend's own native library is loaded.
    assert ("jaxlib" if backend == "jax" else "libtorch") in maps
    assert "libtensorflow" not in maps
