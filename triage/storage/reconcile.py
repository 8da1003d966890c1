"""Start-up reconciliation of the spool with the database, after a crash or kill -9.

- temp files left by an interrupted write are removed (never acknowledged);
- a file without a row is indexed (its row was lost after the file was made durable);
- a row without a file is marked missing;
- jobs left ``running`` by a dead worker return to ``queued``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from triage.db.models import Instance
from triage.logs import get_logger
from triage.receive.header import ReceivedInstance, UnreadableDatasetError, parse_header
from triage.receive.ingest import record_instances
from triage.states import job as job_state
from triage.storage.spool import TEMP_SUFFIX

log = get_logger(__name__)

_BATCH = 500


@dataclass
class ReconcileReport:
    """What start-up reconciliation changed."""

    temp_files_removed: int = 0
    files_indexed: int = 0
    files_unreadable: int = 0
    rows_marked_missing: int = 0
    rows_found_again: int = 0
    jobs_requeued: int = 0


def _spool_files(spool: Path) -> tuple[list[Path], list[Path]]:
    """The spool's instance files and its stray temp files (walked three levels deep)."""
    files: list[Path] = []
    temps: list[Path] = []
    if not spool.is_dir():
        return files, temps
    for root, _dirs, names in os.walk(spool):
        for name in names:
            path = Path(root) / name
            if name.endswith(TEMP_SUFFIX):
                temps.append(path)
            elif name.endswith(".dcm"):
                files.append(path)
    return files, temps


def reconcile(sessions: sessionmaker[Session], spool: Path) -> ReconcileReport:
    """Bring the database and the spool back into agreement. Safe to run at every start."""
    report = ReconcileReport()
    files, temps = _spool_files(spool)
    for tmp in temps:
        tmp.unlink(missing_ok=True)
        report.temp_files_removed += 1

    on_disk = {str(p.relative_to(spool)): p for p in files}
    with sessions() as session:
        rows = session.execute(select(Instance.id, Instance.file_path, Instance.missing)).all()
        known = {r.file_path for r in rows}
        gone = [r.id for r in rows if not r.missing and r.file_path not in on_disk]
        back = [r.id for r in rows if r.missing and r.file_path in on_disk]
        for i in range(0, len(gone), _BATCH):
            session.execute(
                update(Instance).where(Instance.id.in_(gone[i : i + _BATCH])).values(missing=True)
            )
        for i in range(0, len(back), _BATCH):
            session.execute(
                update(Instance).where(Instance.id.in_(back[i : i + _BATCH])).values(missing=False)
            )
        report.rows_marked_missing = len(gone)
        report.rows_found_again = len(back)

        pending: list[ReceivedInstance] = []
        for rel, path in sorted(on_disk.items()):
            if rel in known:
                continue
            try:
                with path.open("rb") as fh:
                    header = parse_header(fh)
            except (UnreadableDatasetError, OSError) as err:
                log.warning("spool_file_unreadable", file=rel, reason=str(err))
                report.files_unreadable += 1
                continue
            stat = path.stat()
            pending.append(
                ReceivedInstance(
                    header=header,
                    file_path=rel,
                    file_size=stat.st_size,
                    received_at=datetime.fromtimestamp(stat.st_mtime, UTC).replace(tzinfo=None),
                )
            )
            if len(pending) >= _BATCH:
                record_instances(session, pending)
                report.files_indexed += len(pending)
                pending = []
        if pending:
            record_instances(session, pending)
            report.files_indexed += len(pending)

        report.jobs_requeued = job_state.requeue_all_running(session)
        session.commit()
    log.info("reconciled", **vars(report))
    return report
