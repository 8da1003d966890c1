"""Helpers the tests import: dcmtk paths, free ports, waiting for servers."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

DCMTK_BIN = Path("/usr/bin")


def dcmtk(tool: str) -> str:
    """Absolute path of a dcmtk tool: pynetdicom installs Python apps of the same names."""
    path = DCMTK_BIN / tool
    if not path.exists():
        raise RuntimeError(f"dcmtk's {tool} is not installed; run .ci/run or apt-get install dcmtk")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")
