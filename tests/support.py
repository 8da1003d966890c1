"""The helpers the tests import: configs, databases, dcmtk paths, free ports, waiting for
servers. (``conftest.py`` files hold fixtures only.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from triage.config import Config, parse_config
from triage.db import create_db_engine, migrate, session_factory

# The product's own helpers, which triage demo and the benchmarks use too.
from triage.demo import free_port, wait_for_port
from triage.storage.reconcile import reconcile

__all__ = [
    "SELECTION",
    "dcmtk",
    "free_port",
    "make_config",
    "make_test_pki",
    "open_db",
    "spool_series",
    "wait_for_port",
]

# Selection rules that let the small synthetic test series (20 slices of 64 x 64) through.
SELECTION = {
    "min_slices": 3,
    "require_original": False,
    "require_axial": False,
    "min_slice_thickness_mm": 0,
    "max_slice_thickness_mm": 50,
}

DCMTK_BIN = Path("/usr/bin")


def make_config(tmp_path: Path, db_url: str | None = None, **sections: Any) -> Config:
    """A validated Config with data_dir in ``tmp_path`` and the given section overrides.

    The receiver listens on a free port and accepts studies whatever the free disk.
    """
    data: dict[str, Any] = {"data_dir": str(tmp_path / "var")}
    if db_url:
        data["database"] = {"url": db_url}
    receiver = {"port": 0, "min_free_disk_mb": 0}
    receiver.update(sections.pop("receiver", {}))
    data["receiver"] = receiver
    data.update(sections)
    return parse_config(data, tmp_path)


def open_db(config: Config | str) -> sessionmaker[Session]:
    """The migrated database of ``config`` (its data folder made), or at a URL, and a
    session factory."""
    if isinstance(config, str):
        url = config
    else:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        url = config.database_url
    engine = create_db_engine(url)
    migrate(engine)
    return session_factory(engine)


def spool_series(config: Config, sessions: sessionmaker[Session], files: list[Path]) -> str:
    """Put ``files`` in the spool as the receiver would, with their rows (the series is
    receiving); return the Series Instance UID."""
    header = dcmread(files[0], stop_before_pixels=True)
    folder = config.spool_dir / header.StudyInstanceUID / header.SeriesInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        sop = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        shutil.copy(path, folder / f"{sop}.dcm")
    reconcile(sessions, config.spool_dir)
    return str(header.SeriesInstanceUID)


def dcmtk(tool: str) -> str:
    """Absolute path of a dcmtk tool: pynetdicom installs Python apps of the same names."""
    path = DCMTK_BIN / tool
    if not path.exists():
        raise RuntimeError(f"dcmtk's {tool} is not installed; run .ci/run or apt-get install dcmtk")
    return str(path)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_test_pki(folder: Path, names: tuple[str, ...] = ("server", "client")) -> Path:
    """A throwaway CA (``ca.pem``) and a certificate + key per name, valid for 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        str(folder / "ca.key"),
        "-out",
        str(folder / "ca.pem"),
        "-subj",
        "/CN=Test CA",
    )
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in names:
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(folder / f"{name}.key"),
            "-out",
            str(folder / f"{name}.csr"),
            "-subj",
            f"/CN={name}",
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(folder / f"{name}.csr"),
            "-CA",
            str(folder / "ca.pem"),
            "-CAkey",
            str(folder / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(folder / f"{name}.pem"),
        )
    return folder
