"""``triage demo``: the whole loop on one machine, for newcomers.

It starts a receiving PACS (Debian's Orthanc if installed, else a small built-in Storage
SCP), the daemon with the shipped demo bundle on a temporary folder, sends a positive and
a negative synthetic CTPA, waits for the results, and prints the worklist and, per
study, its study-view URL and the SR, KOS and summary Secondary Capture series that landed
in the PACS. The servers stay up until Ctrl-C (``--no-keep-running`` stops them at once).
The demo bundle was trained on synthetic phantoms only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
)

from triage.config import DEMO_BUNDLE
from triage.errors import TriageError
from triage.report.sr import SERIES_DESCRIPTION
from triage.send import send_files

ORTHANC = Path("/usr/sbin/Orthanc")
# Fresh realistic studies (the generator's default): seeds outside the demo bundle's training
# and test sets. The demo bundle 0.8.0 flags the positive (0.979) and not the negative
# (0.149), so that the demo shows both paths: the KOS and the flag, and a plain SR.
DEMO_STUDIES = ((90025, True), (90012, False))


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    """Poll until something accepts connections on ``port``; fail if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TriageError(f"a demo process exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TriageError(f"nothing listens on port {port} after {timeout:g} s")


@dataclass
class _Pacs:
    """The receiving PACS: where SRs and KOSs land."""

    port: int
    describe: str
    orthanc: subprocess.Popen[bytes] | None = None
    http_port: int | None = None
    server: Any = None
    received: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        if self.orthanc is not None and self.orthanc.poll() is None:
            self.orthanc.terminate()
            self.orthanc.wait(30)
        if self.server is not None:
            self.server.shutdown()

    def landed(self, with_urls: bool) -> dict[str, list[str]]:
        """The triage's series in the PACS (SR, KOS, Secondary Capture), by Study Instance
        UID; with Orthanc's URL of each while Orthanc runs."""
        by_study: dict[str, list[str]] = {}
        if self.orthanc is not None:
            studies = {
                s["ID"]: s["MainDicomTags"]["StudyInstanceUID"] for s in self._get("studies")
            }
            for s in self._get("series"):
                tags = s["MainDicomTags"]
                modality, description = tags.get("Modality", ""), tags.get("SeriesDescription", "")
                if modality not in ("SR", "KO") and description != SERIES_DESCRIPTION:
                    continue
                line = f"{modality} {description} ({len(s['Instances'])} instances)"
                if with_urls:
                    line += f"  http://127.0.0.1:{self.http_port}/app/explorer.html#series?uuid={s['ID']}"
                by_study.setdefault(studies[s["ParentStudy"]], []).append(line)
            return by_study
        for path in self.received:
            ds = dcmread(path, stop_before_pixels=True)
            by_study.setdefault(str(ds.StudyInstanceUID), []).append(
                f"{ds.get('Modality', '')} {ds.get('SeriesDescription', '')}  {path}"
            )
        return by_study

    def _get(self, what: str) -> list[dict[str, Any]]:
        auth = "Basic " + base64.b64encode(b"demo:demo").decode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/{what}?expand", headers={"Authorization": auth}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return list(json.loads(resp.read()))


def _start_pacs(folder: Path) -> _Pacs:
    port = free_port()
    if ORTHANC.exists():
        http_port = free_port()
        config = {
            "Name": "demo PACS",
            "DicomAet": "ORTHANC",
            "DicomPort": port,
            "HttpPort": http_port,
            "StorageDirectory": str(folder / "orthanc"),
            "IndexDirectory": str(folder / "orthanc"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {"demo": "demo"},
            "DicomAlwaysAllowStore": True,
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        log = (folder / "orthanc.log").open("ab")
        proc = subprocess.Popen(
            [str(ORTHANC), str(folder / "orthanc.json")], stdout=log, stderr=log
        )
        wait_for_port(http_port, proc)
        wait_for_port(port, proc)
        return _Pacs(
            port,
            f"Orthanc at http://127.0.0.1:{http_port}/ (user demo, password demo)",
            orthanc=proc,
            http_port=http_port,
        )
    pacs = _Pacs(port, f"built-in receiver writing to {folder / 'pacs'}")
    (folder / "pacs").mkdir()

    def on_store(event: evt.Event) -> int:
        sop = str(getattr(event.request, "AffectedSOPInstanceUID", "unknown"))
        path = folder / "pacs" / f"{sop}.dcm"
        path.write_bytes(event.encoded_dataset())
        pacs.received.append(path)
        return 0x0000

    ae = AE(ae_title="ORTHANC")
    for uid in (
        Comprehensive3DSRStorage,
        ComprehensiveSRStorage,
        KeyObjectSelectionDocumentStorage,
        SecondaryCaptureImageStorage,
    ):
        ae.add_supported_context(uid)
    pacs.server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    return pacs


def _status(config_path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "triage.cli", "status", "--json", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise TriageError(f"triage status failed: {out.stderr.strip()}")
    return dict(json.loads(out.stdout))


def _print_worklist(web_port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/api/worklist", timeout=10) as resp:
        rows = json.loads(resp.read())["rows"]
    print("\nworklist (positives first):")
    print(
        f"  {'accession':<16} {'state':<12} {'PE prob.':>8}  {'flag':<13} {'slices':>6}  delivery"
    )
    for r in rows:
        prob = "" if r["probability_percent"] is None else f"{r['probability_percent']:.1f}%"
        flag = "PE suspected" if r["flagged"] else ""
        print(
            f"  {r['accession_number'] or '':<16} {r['state']:<12} {prob:>8}  {flag:<13} "
            f"{r['flagged_slices'] if r['flagged_slices'] is not None else '':>6}  "
            f"{r['delivery']}"
        )


def run_demo(keep_running: bool = True, timeout: float = 900, bundle: Path | None = None) -> int:
    """Run the demo; return 0 once both studies are analysed and their SRs delivered.

    With ``keep_running`` the PACS and the daemon stay up until Ctrl-C, so the printed
    worklist, study-view and PACS URLs can be opened; without, everything stops at once
    and no URL is printed for a server that is gone.
    """
    from model.synthetic import StudyParams, generate_study, write_study

    folder = Path(tempfile.mkdtemp(prefix="triage-demo-"))
    print(f"demo folder: {folder}")
    bundle_dir = bundle or DEMO_BUNDLE
    print(
        f"bundle: {bundle_dir}"
        + ("" if bundle else " (trained on synthetic phantoms only: NOT FOR CLINICAL USE)")
    )
    pacs = _start_pacs(folder)
    print(f"receiving PACS: {pacs.describe}")
    receiver_port, web_port = free_port(), free_port()
    config = {
        "data_dir": str(folder / "var"),
        "receiver": {"port": receiver_port, "min_free_disk_mb": 100},
        "series": {"stable_seconds": 3, "sweep_interval_seconds": 1},
        "worker": {"processes": 1, "poll_seconds": 0.5},
        "model": {"bundle": str(bundle_dir)},
        "web": {"port": web_port},
        "dispatch": {"backoff_seconds": 1, "sweep_interval_seconds": 1},
        "destinations": [
            {
                "name": "pacs",
                "type": "dicom",
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": pacs.port,
                "send_secondary_capture": True,
            },
        ],
        "logging": {"format": "json", "level": "INFO"},
    }
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = (folder / "daemon.log").open("ab")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "triage.cli", "serve", "--config", str(config_path)],
        stdout=log,
        stderr=log,
    )
    try:
        wait_for_port(receiver_port, daemon)
        print(
            f"daemon: DICOM TRIAGE@127.0.0.1:{receiver_port}, worklist "
            f"http://127.0.0.1:{web_port}/, log {folder / 'daemon.log'}"
        )
        kinds: dict[str, str] = {}  # Study Instance UID: which study it is
        for seed, positive in DEMO_STUDIES:
            phantom = generate_study(seed, StudyParams(positive=positive))
            written = write_study(phantom, folder / "studies")
            header = dcmread(written.axial.paths[0], stop_before_pixels=True)
            kinds[str(header.StudyInstanceUID)] = "with emboli" if positive else "without emboli"
            sent = send_files(
                [written.axial.paths[0].parent], "127.0.0.1", receiver_port, "DEMOSCU", "TRIAGE"
            )
            kind = "with emboli" if positive else "without emboli"
            print(f"sent a synthetic CTPA {kind}: {sent.sent} images, {len(sent.failures)} failed")
        deadline = time.monotonic() + timeout
        while True:
            status = _status(config_path)
            jobs = status["counts"]["jobs"]
            finished = sum(jobs.get(k, 0) for k in ("done", "undetermined", "failed"))
            deliveries = status["counts"]["deliveries"]
            if finished == len(DEMO_STUDIES) and deliveries and set(deliveries) <= {"sent"}:
                break
            if time.monotonic() > deadline:
                raise TriageError(f"the demo did not finish in {timeout:g} s; see {folder}")
            time.sleep(1)
        _print_worklist(web_port)
        print("\nStructured Reports, Key Object Selections and summary images in the PACS:")
        landed = pacs.landed(with_urls=keep_running)
        for study_uid, kind in kinds.items():
            print(f"  study {kind} ({study_uid}):")
            if keep_running:
                print(f"    study view  http://127.0.0.1:{web_port}/study/{study_uid}")
            for line in landed.get(study_uid, []) or ["nothing"]:
                print(f"    {line}")
        if keep_running:
            print(f"\nworklist: http://127.0.0.1:{web_port}/   PACS: {pacs.describe}")
            print("running; Ctrl-C stops everything")
            with contextlib.suppress(KeyboardInterrupt):
                daemon.wait()
        return 0
    finally:
        if daemon.poll() is None:
            daemon.terminate()
            daemon.wait(60)
        pacs.stop()
        print(f"\nstopped; everything is in {folder} (remove it with rm -rf)")
