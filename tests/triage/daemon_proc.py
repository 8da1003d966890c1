"""Runs ``triage serve`` as a real subprocess, as systemd would."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from support import free_port, wait_for_port


class Daemon:
    """A ``triage serve`` process with its config file and captured log."""

    def __init__(self, folder: Path, **sections: Any) -> None:
        self.folder = folder
        self.port = free_port()
        receiver = {"port": self.port, "min_free_disk_mb": 0, "shutdown_timeout": 5}
        receiver.update(sections.pop("receiver", {}))
        # No inference workers unless a test asks: each would import TensorFlow and load
        # a bundle, seconds of CPU that the receiver tests would compete with.
        sections.setdefault("worker", {"processes": 0})
        data: dict[str, Any] = {
            "data_dir": str(folder / "var"),
            "receiver": receiver,
            "logging": {"format": "json", "level": "DEBUG"},
            # A free port: tests run beside each other and beside a real daemon.
            "web": {"port": 0},
            **sections,
        }
        self.config_path = folder / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(data))
        self.log_path = folder / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "triage.cli", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
        )
        wait_for_port(self.port, self.proc, timeout=30)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run another ``triage`` subcommand against this daemon's config."""
        return subprocess.run(
            [sys.executable, "-m", "triage.cli", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines whose event is ``name``, oldest first."""
        out = []
        for line in self.log_text().splitlines():
            if f'"{name}"' in line:
                record = json.loads(line)
                if record.get("event") == name:
                    out.append(record)
        return out
