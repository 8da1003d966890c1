"""The spool: received instances as files, written durably before they are acknowledged.

Layout: ``<data_dir>/spool/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``. UIDs come from the
network, so each is checked against the DICOM UID grammar before it becomes part of a
path; nothing a peer sends can climb out of the spool.

The grammar checked is PS3.5 9.1's: components of digits separated by single dots, at
most 64 characters, matched against the whole value (a trailing newline is refused).
One rule is relaxed on purpose: a component with a leading zero (``1.2.03``) is
accepted, because old scanners send such UIDs, and refusing them would lose the study,
while they are as safe in a path as any other digits.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

from triage.errors import InvalidUIDError

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
TEMP_SUFFIX = ".tmp"


def validate_uid(uid: object, what: str = "UID") -> str:
    """Return ``uid`` if it follows the DICOM UID grammar, else raise.

    Raises
    ------
    InvalidUIDError
        If it is not digits and dots (the whole value: no trailing newline), or is
        longer than 64 characters.
    """
    if not isinstance(uid, str) or len(uid) > 64 or not _UID.fullmatch(uid):
        raise InvalidUIDError(
            f"{what} {str(uid)[:80]!r} is not a valid DICOM UID "
            "(digits and dots, at most 64 characters)"
        )
    return uid


def instance_path(spool: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """Where an instance lives in the spool; every UID is validated first."""
    return (
        spool
        / validate_uid(study_uid, "Study Instance UID")
        / validate_uid(series_uid, "Series Instance UID")
        / f"{validate_uid(sop_uid, 'SOP Instance UID')}.dcm"
    )


def fsync_dir(path: Path) -> None:
    """Make the entries of the folder at ``path`` (a new file, a rename) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """Create ``path`` and its parents (mode 0700), fsyncing each parent of a new folder.

    A new study folder is only durable once its parent directory entry is on disk too.
    """
    if path.is_dir():
        return
    _make_dirs(path.parent)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    fsync_dir(path.parent)


def write_durably(path: Path, data: bytes | memoryview) -> int:
    """Write ``data`` to ``path`` so that it survives a crash once this returns.

    The bytes go to a temp file in the same folder, which is fsynced, renamed over
    ``path`` (atomic; a re-sent instance simply replaces the old file) and followed by
    an fsync of the folder. Returns the number of bytes written.
    """
    _make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return len(data)


def free_disk_mb(path: Path) -> float:
    """Free space, in MiB, on the file system holding ``path`` (or its nearest parent)."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / (1024 * 1024)
