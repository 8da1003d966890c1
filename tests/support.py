"""Helpers the tests import: dcmtk paths, free ports, waiting for servers."""

from __future__ import annotations

import subprocess
from pathlib import Path

# The product's own helpers, which triage demo and the benchmarks use too.
from triage.demo import free_port, wait_for_port

__all__ = ["dcmtk", "free_port", "make_test_pki", "wait_for_port"]

DCMTK_BIN = Path("/usr/bin")


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
