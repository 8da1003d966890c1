"""Where one result's report files live: ``<data_dir>/outbox/<result id>/``.

The worker writes them (:mod:`triage.analyse.store`), the dispatcher reads them
(:mod:`triage.dispatch.context`) and the retention sweep deletes them
(:mod:`triage.storage.retention`); all three take the layout from here.

A result's files are written to ``<result id>.partial/`` inside the transaction that
stores the result, and the folder is renamed to ``<result id>/`` only after the commit
(:func:`publish`). So a crash can leave two things, and :func:`recover` (run at
start-up and by the retention sweep) settles both:

- a ``.partial`` folder whose result row exists: the commit happened, the rename did
  not; it is renamed now;
- a ``.partial`` folder whose result row does not exist: the transaction never
  committed; it is removed once it is older than a lease, since a worker on another
  host may still be between its write and its commit.

An outbox folder without a result row (left by a version that wrote in place before
its commit) is removed the same way.

The key images of the study view (:mod:`triage.analyse.key_images`) are made after the
commit, so that they never delay the flag. They go into ``<result id>/key_images/``,
written to ``key_images.partial/`` first and renamed once complete
(:func:`write_key_images`): the study view sees all of them or none. A crash in between
leaves a ``key_images.partial`` folder, which :func:`recover` removes once it is older
than a lease.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage.db.models import Result
from triage.logs import get_logger
from triage.storage.spool import fsync_dir, write_durably

log = get_logger(__name__)

#: The Comprehensive 3D SR, written for every result that has readable headers.
SR_FILE = "sr.dcm"
#: The Key Object Selection, written for positives only.
KOS_FILE = "kos.dcm"
#: The study view's key images: PNGs and their index, in a folder of the outbox folder.
KEY_IMAGES_DIR = "key_images"
#: The index of the key images: per image its slice, position and probability, and the
#: per-slice probability curve with the threshold.
KEY_IMAGES_INDEX = "key_images.json"
_PARTIAL = ".partial"
_IN_CHUNK = 500  # ids per IN (...): SQLite limits bound variables per statement


def outbox_root(data_dir: Path) -> Path:
    """The folder that holds every result's outbox folder."""
    return data_dir / "outbox"


def outbox_dir(data_dir: Path, result_id: int) -> Path:
    """The folder where one result's SR and KOS are, once its result is committed."""
    return outbox_root(data_dir) / str(result_id)


def partial_dir(data_dir: Path, result_id: int) -> Path:
    """The folder the worker writes one result's files to before its commit."""
    return outbox_root(data_dir) / f"{result_id}{_PARTIAL}"


def key_images_dir(data_dir: Path, result_id: int) -> Path:
    """The folder of one result's key images (see :data:`KEY_IMAGES_INDEX`)."""
    return outbox_dir(data_dir, result_id) / KEY_IMAGES_DIR


def write_key_images(data_dir: Path, result_id: int, files: Mapping[str, bytes]) -> Path | None:
    """Write a committed result's key images, all or none, into its outbox folder.

    ``files`` maps file names to their bytes. They are written durably to
    ``key_images.partial/`` and the folder is then renamed to ``key_images/``, replacing
    an older one. Returns the folder, or ``None`` when the result's outbox folder is not
    published yet (its rename failed; :func:`recover` would replace a folder made now).
    """
    if partial_dir(data_dir, result_id).exists():
        return None
    outbox = outbox_dir(data_dir, result_id)
    outbox.mkdir(parents=True, exist_ok=True)  # a result without an SR has none yet
    final = outbox / KEY_IMAGES_DIR
    temporary = outbox / f"{KEY_IMAGES_DIR}{_PARTIAL}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    for name, data in files.items():
        write_durably(temporary / name, data)
    if final.exists():
        shutil.rmtree(final)
    os.rename(temporary, final)
    fsync_dir(outbox)
    return final


def publish(data_dir: Path, result_id: int) -> bool:
    """Rename the result's ``.partial`` folder to its outbox folder, after the commit.

    Returns ``False`` when there was nothing to rename (no files were written, or
    :func:`recover` got there first).
    """
    partial = partial_dir(data_dir, result_id)
    final = outbox_dir(data_dir, result_id)
    if not partial.is_dir():
        return False
    if final.exists():
        # SQLite can hand out a result id again after a crash; nothing owns that folder.
        shutil.rmtree(final)
    try:
        os.rename(partial, final)
    except FileNotFoundError:  # recover() in another process renamed it meanwhile
        return False
    fsync_dir(final.parent)
    return True


@dataclass
class OutboxRecovery:
    """What :func:`recover` did."""

    published: int = 0
    removed: int = 0


def recover(
    sessions: sessionmaker[Session], data_dir: Path, min_age_seconds: float
) -> OutboxRecovery:
    """Finish or remove the ``.partial`` folders a crash left (see the module doc).

    Parameters
    ----------
    sessions : sessionmaker
        The process's session factory.
    data_dir : Path
        The daemon's data folder.
    min_age_seconds : float
        A folder without a result row is removed only once it is this old (a lease:
        a worker that held its claim longer has lost it, and cannot commit).
    """
    report = OutboxRecovery()
    root = outbox_root(data_dir)
    if not root.is_dir():
        return report
    partials: dict[int, Path] = {}
    finals: dict[int, Path] = {}
    for folder in root.iterdir():
        stem = folder.name.removesuffix(_PARTIAL)
        if stem.isdigit() and folder.is_dir():
            (partials if folder.name.endswith(_PARTIAL) else finals)[int(stem)] = folder
    committed = _existing_results(sessions, [*partials, *finals])
    now = time.time()
    for result_id in sorted(partials):
        if result_id in committed:
            if publish(data_dir, result_id):
                report.published += 1
                log.warning("outbox_published_after_crash", result_id=result_id)
        elif _remove_if_old(partials[result_id], now, min_age_seconds):
            report.removed += 1
            log.warning("outbox_orphan_removed", result_id=result_id)
    # Key images a crash interrupted: the result stands without them.
    for result_id in sorted(set(finals) & committed):
        unfinished = finals[result_id] / f"{KEY_IMAGES_DIR}{_PARTIAL}"
        if unfinished.is_dir() and _remove_if_old(unfinished, now, min_age_seconds):
            report.removed += 1
            log.warning("key_images_partial_removed", result_id=result_id)
    # Written by a version that wrote the files in place before its commit.
    for result_id in sorted(set(finals) - committed):
        if _remove_if_old(finals[result_id], now, min_age_seconds):
            report.removed += 1
            log.warning("outbox_orphan_removed", result_id=result_id)
    return report


def _existing_results(sessions: sessionmaker[Session], ids: list[int]) -> set[int]:
    found: set[int] = set()
    with sessions() as session:
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i : i + _IN_CHUNK]
            found.update(session.scalars(select(Result.id).where(Result.id.in_(chunk))))
    return found


def _remove_if_old(folder: Path, now: float, min_age_seconds: float) -> bool:
    try:
        age = now - folder.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < min_age_seconds:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True
