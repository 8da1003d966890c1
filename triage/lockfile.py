"""The data folder's lock: one ``triage serve`` per data folder.

A second daemon on the same configuration would reconcile the first's live spool and
database (removing its temp files, requeueing its running jobs) and replace its pid
file. The lock is taken before anything in the folder is touched. It is an ``flock`` on
``<data_dir>/triage.lock``: the kernel releases it when the process ends, however it
ends, so a crashed daemon never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from triage.errors import AlreadyRunningError, TriageError


def lock_path(data_dir: Path) -> Path:
    """The lock file of ``data_dir``."""
    return data_dir / "triage.lock"


class DataDirLock:
    """An exclusive lock on a data folder, held from construction until :meth:`release`.

    Parameters
    ----------
    data_dir : Path
        The folder; it is created (mode 0700) if it does not exist.

    Raises
    ------
    AlreadyRunningError
        If another process holds the lock.
    TriageError
        If the folder cannot be created or written.
    """

    def __init__(self, data_dir: Path) -> None:
        path = lock_path(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Not inherited by the receiver and worker processes (os.open's default),
            # so the lock is this process's alone.
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise TriageError(
                f"cannot use data_dir {data_dir}: {err.strerror or err}; "
                "make it a folder the service user can create and write"
            ) from err
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(self._fd)
            self._fd = None
            raise AlreadyRunningError(
                f"another triage serve is already running on data_dir {data_dir} "
                f"({_holder(data_dir)}); stop it first, or give this one its own data_dir"
            ) from err

    def release(self) -> None:
        """Release the lock (closing the file releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.release()


def _holder(data_dir: Path) -> str:
    # The pid file is written after the lock is taken; it may not be there yet.
    try:
        return f"pid {int((data_dir / 'triage.pid').read_text().strip())}"
    except (OSError, ValueError):
        return "pid unknown"
