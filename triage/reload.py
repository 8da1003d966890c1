"""Threshold reloads: ``triage reload`` or SIGHUP applies the YAML's thresholds to new jobs.

The daemon writes its pid to ``<data_dir>/triage.pid``. ``triage reload`` validates the
file, sends SIGHUP to that pid and waits for the daemon to confirm with an audit event.
On SIGHUP the daemon validates the file again (it may have changed since), keeps its
old configuration if the file is invalid, and otherwise records the old and new
thresholds as an ``thresholds_reloaded`` audit event and signals its workers, which
re-read the thresholds before their next job.

Only ``thresholds`` take effect on a reload. Other changed sections are named in the
log and need a restart.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from triage.config import Config, load_config
from triage.db.models import AuditEvent
from triage.errors import ConfigError, TriageError
from triage.logs import get_logger
from triage.supervisor import RELOAD

log = get_logger(__name__)

AUDIT_KIND = "thresholds_reloaded"
#: How long ``triage reload`` waits for the daemon's confirmation.
CONFIRM_TIMEOUT = 15.0


def pid_file(config: Config) -> Path:
    """Where ``triage serve`` records its pid for ``triage reload``."""
    return config.data_dir / "triage.pid"


def write_pid_file(path: Path) -> None:
    """Record this process's pid at ``path`` (mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{os.getpid()}\n")


def remove_pid_file(path: Path) -> None:
    """Remove the pid file if it is still ours (a second daemon may have replaced it)."""
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass


def threshold_changes(old: Config, new: Config) -> dict[str, dict[str, Any]]:
    """``{key: {"old": ..., "new": ...}}`` for each threshold that differs."""
    before, after = old.thresholds.model_dump(), new.thresholds.model_dump()
    return {k: {"old": before[k], "new": after[k]} for k in after if before.get(k) != after[k]}


def _sections_needing_restart(old: Config, new: Config) -> list[str]:
    return [
        name
        for name in type(new).model_fields
        if name != "thresholds" and getattr(old, name) != getattr(new, name)
    ]


def apply_reload(config_path: Path, current: Config, sessions: sessionmaker[Session]) -> Config:
    """Re-read and validate the file; record and return the new thresholds, or keep the old.

    Parameters
    ----------
    config_path : Path
        The daemon's configuration file.
    current : Config
        The configuration in force.
    sessions : sessionmaker
        For the audit event.

    Returns
    -------
    Config
        ``current`` with the file's thresholds, or ``current`` itself when the file is
        invalid (nothing is recorded then).
    """
    try:
        new = load_config(config_path)
    except ConfigError as err:
        log.error(
            "reload_rejected",
            config=str(config_path),
            problems=[f"{path}: {reason}" for path, reason in err.problems],
        )
        return current
    changes = threshold_changes(current, new)
    detail = {
        "old": current.thresholds.model_dump(),
        "new": new.thresholds.model_dump(),
        "changed": changes,
        "pid": os.getpid(),
    }
    with sessions() as session:
        session.add(AuditEvent(kind=AUDIT_KIND, detail=detail))
        session.commit()
    restart = _sections_needing_restart(current, new)
    log.info("thresholds_reloaded", changed=changes, old=detail["old"], new=detail["new"])
    if restart:
        log.warning("reload_needs_restart", sections=restart)
    return current.model_copy(update={"thresholds": new.thresholds})


@dataclass(frozen=True)
class ReloadOutcome:
    """What the daemon confirmed: the thresholds before and after, and what changed."""

    old: dict[str, Any]
    new: dict[str, Any]
    changed: dict[str, dict[str, Any]]


def _running_pid(path: Path) -> int:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError) as err:
        raise TriageError(
            f"no running daemon: cannot read its pid file {path}; start it with triage serve"
        ) from err
    try:
        os.kill(pid, 0)
    except ProcessLookupError as err:
        raise TriageError(
            f"no running daemon: pid {pid} from {path} is not running; start it with triage serve"
        ) from err
    cmdline = Path(f"/proc/{pid}/cmdline")
    # A stale pid file may name a pid that now belongs to another program; SIGHUP
    # would terminate it.
    if cmdline.exists() and b"triage" not in cmdline.read_bytes():
        raise TriageError(
            f"pid {pid} from {path} is not a triage daemon (a stale pid file); "
            "is the daemon running?"
        )
    return pid


def request_reload(
    config_path: Path, sessions: sessionmaker[Session], timeout: float = CONFIRM_TIMEOUT
) -> ReloadOutcome:
    """Validate the file, SIGHUP the daemon and wait for its audit event.

    Raises
    ------
    ConfigError
        The file is invalid; nothing was sent.
    TriageError
        No daemon runs, or it did not confirm within ``timeout`` seconds.
    """
    config = load_config(config_path)
    pid = _running_pid(pid_file(config))
    with sessions() as session:
        last = session.scalar(select(func.max(AuditEvent.id))) or 0
    os.kill(pid, RELOAD)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as session:
            event = session.scalars(
                select(AuditEvent)
                .where(AuditEvent.id > last, AuditEvent.kind == AUDIT_KIND)
                .order_by(AuditEvent.id)
            ).first()
        if event is not None:
            return ReloadOutcome(event.detail["old"], event.detail["new"], event.detail["changed"])
        time.sleep(0.2)
    raise TriageError(
        f"the daemon (pid {pid}) did not confirm the reload within {timeout:g} s; its log says why"
    )
