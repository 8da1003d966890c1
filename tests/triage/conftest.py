"""Fixtures for the daemon: an in-process receiver on a free port, and configs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from triage.config import Config, parse_config
from triage.db import create_db_engine, migrate, session_factory
from triage.receive.recorder import InstanceRecorder
from triage.receive.scp import Receiver, StoreTarget


def make_config(tmp_path: Path, db_url: str | None = None, **sections: Any) -> Config:
    """A validated Config with data_dir in ``tmp_path`` and the given section overrides."""
    data: dict[str, Any] = {"data_dir": str(tmp_path / "var")}
    if db_url:
        data["database"] = {"url": db_url}
    receiver = {"port": 0, "min_free_disk_mb": 0}
    receiver.update(sections.pop("receiver", {}))
    data["receiver"] = receiver
    data.update(sections)
    return parse_config(data, tmp_path)


def open_db(config: Config) -> sessionmaker[Session]:
    """The migrated database of ``config`` (its data folder made) and a session factory."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(config.database_url)
    migrate(engine)
    return session_factory(engine)


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
        engine = create_db_engine(config.database_url)
        migrate(engine)
        sessions = session_factory(engine)
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
