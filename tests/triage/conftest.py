"""Fixtures for the daemon: an in-process receiver on a free port, and configs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker
from support import make_config, open_db

from triage.config import Config
from triage.receive.recorder import InstanceRecorder
from triage.receive.scp import Receiver, StoreTarget


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained small bundle: its thresholds are 0.5, its probabilities meaningless."""
    from model.bundle import init_bundle

    out = tmp_path_factory.mktemp("bundle") / "untrained"
    init_bundle(out, backbone="small", input_size=32, num_slices=16, seed=0)
    return out


@pytest.fixture(scope="module")
def predictor(bundle_dir: Path) -> Any:
    """The untrained small bundle, loaded."""
    from model.predict import Predictor

    with pytest.warns(UserWarning, match="untrained"):
        return Predictor.load(bundle_dir)


@dataclass
class RunningReceiver:
    config: Config
    receiver: Receiver
    sessions: sessionmaker[Session]

    @property
    def port(self) -> int:
        return self.receiver.port

    @property
    def spool(self) -> Path:
        return self.config.spool_dir


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator[Callable[..., RunningReceiver]]:
    """Start a real Storage SCP in this process; stopped at teardown."""
    started: list[tuple[Receiver, InstanceRecorder]] = []

    def start(db_url: str | None = None, **sections: Any) -> RunningReceiver:
        config = make_config(tmp_path, db_url, **sections)
        config.spool_dir.mkdir(parents=True, exist_ok=True)
        sessions = open_db(config)
        recorder = InstanceRecorder(sessions)
        receiver = Receiver(
            config.receiver,
            StoreTarget(config.spool_dir, config.receiver.min_free_disk_mb, recorder),
        )
        started.append((receiver, recorder))
        return RunningReceiver(config, receiver, sessions)

    yield start
    for receiver, recorder in started:
        receiver.stop(timeout=2)
        recorder.close()
