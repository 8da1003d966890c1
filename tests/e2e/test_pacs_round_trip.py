"""End to end: a PACS (Debian's Orthanc) forwards CTPAs with the shipped Lua script, the
daemon analyses them and sends back SR + KOS (and the positive's summary Secondary Capture
series), the RIS gets one ORU.

Everything is real and on loopback: Orthanc, dcmtk's storescu as the modality, the
``triage serve`` process with its TensorFlow inference worker running the shipped demo
bundle (the default ``model.bundle``) with its own thresholds, an MLLP listener as the RIS.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "triage"))

from daemon_proc import Daemon
from dispatch_helpers import MLLPListener, segments
from support import dcmtk, free_port, wait_for_port

ROOT = Path(__file__).parents[2]
ORTHANC = "/usr/sbin/Orthanc"
AUTH = "Basic " + base64.b64encode(b"admin:change-me").decode()

# Seeds of one realistic synthetic study with emboli and one without, outside the demo
# bundle's training and test sets (the same as `triage demo`). This test is of the
# pipeline, not of the model: the demo bundle 0.8.0 flags the positive (0.979 against
# its stack threshold of 0.536) and not the negative (0.149). The bundle's accuracy is
# in its report.
POSITIVE_SEED, NEGATIVE_SEED = 90025, 90012


class Orthanc:
    """Orthanc from Debian, with the example config and Lua script from deploy/orthanc."""

    def __init__(self, folder: Path, triage_port: int) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.dicom_port = free_port()
        self.http_port = free_port()
        config = json.loads((ROOT / "deploy" / "orthanc" / "orthanc.json").read_text())
        config.update(
            DicomPort=self.dicom_port,
            HttpPort=self.http_port,
            StorageDirectory=str(folder / "storage"),
            IndexDirectory=str(folder / "storage"),
            # The example accepts stores only from known modalities: the scanner and triage.
            DicomModalities={
                "triage": ["TRIAGE", "127.0.0.1", triage_port],
                "scanner": ["SCANNER", "127.0.0.1", 104],
            },
            LuaScripts=[str(ROOT / "deploy" / "orthanc" / "forward-ctpa.lua")],
            StableAge=2,
        )
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Orthanc:
        log = (self.folder / "orthanc.log").open("ab")
        self.proc = subprocess.Popen([ORTHANC, str(self.config_path)], stdout=log, stderr=log)
        wait_for_port(self.http_port, self.proc, timeout=30)
        wait_for_port(self.dicom_port, self.proc, timeout=30)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def get(self, path: str) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", headers={"Authorization": AUTH}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def studies(tmp_path: Path) -> dict[str, Path]:
    from model.synthetic import StudyParams, generate_study, write_study

    out = {}
    for name, seed, positive in (
        ("positive", POSITIVE_SEED, True),
        ("negative", NEGATIVE_SEED, False),
    ):
        phantom = generate_study(seed, StudyParams(positive=positive))
        written = write_study(phantom, tmp_path / name)
        out[name] = written.axial.paths[0].parent
    return out


@pytest.fixture
def orthanc_and_daemon(tmp_path: Path) -> Iterator[tuple[Orthanc, Daemon, MLLPListener]]:
    assert Path(ORTHANC).exists(), "Orthanc is missing: apt-get install orthanc"
    ris = MLLPListener()
    triage_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", triage_port)
    (tmp_path / "triage").mkdir()
    daemon = Daemon(
        tmp_path / "triage",
        receiver={"port": triage_port, "allowed_calling_aets": ["ORTHANC"]},
        series={"stable_seconds": 6, "sweep_interval_seconds": 0.5},
        worker={"processes": 1, "poll_seconds": 0.3},
        # No model section: the default is the shipped demo bundle and its thresholds.
        # Enough attempts to outlast the PACS outage below.
        dispatch={
            "backoff_seconds": 0.5,
            "max_backoff_seconds": 2,
            "sweep_interval_seconds": 0.5,
            "max_attempts": 200,
        },
        destinations=[
            {
                "name": "pacs",
                "type": "dicom",
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "send_secondary_capture": True,
            },
            {"name": "ris", "type": "hl7", "host": "127.0.0.1", "port": ris.port},
        ],
    )
    daemon.port = triage_port
    try:
        yield orthanc.start(), daemon.start(), ris
    finally:
        daemon.stop()
        orthanc.stop()
        ris.close()


def _status(daemon: Daemon) -> dict[str, Any]:
    out = daemon.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.timeout(900)
def test_pacs_round_trip(
    studies: dict[str, Path],
    orthanc_and_daemon: tuple[Orthanc, Daemon, MLLPListener],
    tmp_path: Path,
) -> None:
    orthanc, daemon, ris = orthanc_and_daemon
    # The modality sends both studies to the PACS; the Lua script forwards them.
    for folder in studies.values():
        scu = subprocess.run(
            [
                dcmtk("storescu"),
                "-aet",
                "SCANNER",
                "-aec",
                "ORTHANC",
                "127.0.0.1",
                str(orthanc.dicom_port),
                "+sd",
                str(folder),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        assert scu.returncode == 0, scu.stdout + scu.stderr
    # Once every image has been forwarded, and before the series are complete, the PACS
    # goes down: the results must wait for it and then all arrive.
    expected = sum(len(list(folder.iterdir())) for folder in studies.values())
    _wait(
        lambda: _status(daemon)["counts"]["instances"] == expected,
        240,
        "every image to be forwarded by the Lua script",
    )
    orthanc.stop()
    _wait(
        lambda: (
            any(
                d["state"] in ("retrying", "dead")
                for st in _status(daemon)["studies"]
                for s in st["series"]
                for d in ((s.get("result") or {}).get("deliveries") or [])
            )
            or "retrying" in daemon.log_text()
        ),
        300,
        "a delivery to fail while the PACS is down",
    )
    orthanc.start()

    def delivered() -> bool:
        jobs = _status(daemon)["counts"]["jobs"]
        if jobs.get("done", 0) != 2:
            return False
        return len(orthanc.get("/studies")) == 2 and all(
            len(orthanc.get(f"/studies/{s}/series")) >= 2 for s in orthanc.get("/studies")
        )

    _wait(delivered, 300, "both results to be analysed and delivered")

    # SR in both studies, KOS only in the positive one.
    modalities = {}
    for study_id in orthanc.get("/studies"):
        study = orthanc.get(f"/studies/{study_id}")
        uid = study["MainDicomTags"]["StudyInstanceUID"]
        modalities[uid] = sorted(
            orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"] for s in study["Series"]
        )
    from pydicom import dcmread

    uid_of = {
        name: dcmread(next(folder.iterdir()), stop_before_pixels=True).StudyInstanceUID
        for name, folder in studies.items()
    }
    positive = dcmread(next(studies["positive"].iterdir()), stop_before_pixels=True)
    accession = positive.AccessionNumber
    # The positive also has the summary Secondary Capture series (OT): the curve page and
    # one image per key slice.
    assert modalities[uid_of["positive"]] == ["CT", "KO", "OT", "SR"]
    assert modalities[uid_of["negative"]] == ["CT", "SR"]
    (sc_series,) = [
        s for s in orthanc.get("/series?expand") if s["MainDicomTags"].get("Modality") == "OT"
    ]
    assert "NOT FOR DIAGNOSTIC USE" in sc_series["MainDicomTags"]["SeriesDescription"]
    assert len(sc_series["Instances"]) >= 2

    # Exactly one ORU, for the positive study, keyed on its accession number.
    _wait(lambda: ris.messages, 60, "the ORU")
    time.sleep(2)
    assert len(ris.messages) == 1
    seg = segments(ris.messages[0])
    assert seg["MSH"][0][9].startswith("ORU^R01")
    assert seg["OBR"][0][3] == accession
    assert seg["OBR"][0][25] == "P"

    # The worklist shows the positive study first.
    port = daemon.events("serving")[-1]["web"].rsplit(":", 1)[1].strip("/")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/worklist", timeout=10) as resp:
        rows = json.loads(resp.read())["rows"]
    assert rows[0]["accession_number"] == accession
    assert rows[0]["flagged"] is True
    assert rows[1]["flagged"] is False

    # Nothing identifying the patient in any daemon log line.
    ds = dcmread(next(studies["positive"].iterdir()), stop_before_pixels=True)
    log = daemon.log_text()
    for value in (str(ds.PatientName), ds.PatientID, accession):
        assert value not in log
    shutil.copy(daemon.log_path, tmp_path / "kept-daemon.log")
