"""Where one result's report files live: ``<data_dir>/outbox/<result id>/``.

The worker writes them (:mod:`triage.analyse.store`), the dispatcher reads them
(:mod:`triage.dispatch.context`) and the retention sweep deletes them
(:mod:`triage.storage.retention`); all three take the layout from here.
"""

from __future__ import annotations

from pathlib import Path

#: The Comprehensive 3D SR, written for every result that has readable headers.
SR_FILE = "sr.dcm"
#: The Key Object Selection, written for positives only.
KOS_FILE = "kos.dcm"


def outbox_root(data_dir: Path) -> Path:
    """The folder that holds every result's outbox folder."""
    return data_dir / "outbox"


def outbox_dir(data_dir: Path, result_id: int) -> Path:
    """The folder where the worker writes one result's SR and KOS."""
    return outbox_root(data_dir) / str(result_id)
