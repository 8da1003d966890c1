"""Helpers for the dispatch tests: a database with a result and its outbox, and peers.

The peers are real servers on free loopback ports: a pynetdicom Storage SCP, a UPS
Push SCP, an MLLP listener and an HTTP server, each recording what it received.
"""

from __future__ import annotations

import socketserver
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from dicom_factory import ACCESSION, PATIENT_ID, ct_slice
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    KeyObjectSelectionDocumentStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import UnifiedProcedureStepPush  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker
from support import make_config

from triage.config import Config
from triage.db import (
    Decision,
    Delivery,
    Job,
    JobState,
    Result,
    Series,
    Study,
)
from triage.report import AnalysisResult, build_kos, build_sr
from triage.storage.outbox import outbox_dir

SHA = "0123456789abcdef" * 4
PROBABILITY = 0.8764


def dispatch_config(
    tmp_path: Path, db_url: str, destinations: list[dict[str, Any]], **dispatch: Any
) -> Config:
    """:func:`support.make_config` with these destinations and a short retry policy."""
    policy = {"max_attempts": 4, "backoff_seconds": 10, "max_backoff_seconds": 25, **dispatch}
    return make_config(tmp_path, db_url, destinations=destinations, dispatch=policy)


@dataclass
class Seeded:
    """One analysed series with its result, outbox files and delivery rows."""

    result_id: int
    study_instance_uid: str
    series_instance_uid: str
    sr_sop_instance_uid: str
    kos_sop_instance_uid: str | None
    deliveries: dict[str, int] = field(default_factory=dict)


def seed_result(
    sessions: sessionmaker[Session],
    config: Config,
    destinations: list[str],
    *,
    decision: str = "present",
    accession: str | None = ACCESSION,
    patient_id: str | None = PATIENT_ID,
    write_files: bool = True,
) -> Seeded:
    """Create what the worker leaves behind: rows, the SR (and KOS) in the outbox."""
    study_uid, series_uid = generate_uid(), generate_uid()
    sources = []
    for i in range(20):
        ds = ct_slice(study_uid, series_uid, i)
        del ds.PixelData
        ds.AccessionNumber = accession or ""
        sources.append(ds)
    flagged = [str(sources[i].SOPInstanceUID) for i in (12, 11, 13)]
    with sessions.begin() as session:
        study = Study(
            study_instance_uid=study_uid, patient_id=patient_id, accession_number=accession
        )
        series = Series(study=study, series_instance_uid=series_uid, modality="CT")
        job = Job(series=series, state=JobState.DONE)
        session.add_all([study, series, job])
        session.flush()
        result = Result(
            job_id=job.id,
            series_id=series.id,
            decision=Decision(decision),
            stack_probability=PROBABILITY if decision == "present" else 0.03,
            flagged_sop_instance_uids=flagged if decision == "present" else [],
            bundle_name="pe-ctpa-bundle",
            bundle_version="2.1.0",
            bundle_sha256=SHA,
        )
        session.add(result)
        session.flush()
        probabilities = {str(ds.SOPInstanceUID): 0.1 for ds in sources}
        if decision == "present":
            probabilities.update({uid: 0.9 for uid in flagged})
        analysis = AnalysisResult(
            result_id=f"result-{result.id}-{study_uid}",
            decision=decision,  # type: ignore[arg-type]
            stack_probability=result.stack_probability,
            slice_probabilities=probabilities,
            flagged_sop_instance_uids=flagged if decision == "present" else [],
            thresholds={"stack": 0.5, "slice": 0.5},
            algorithm_name="CTPA PE triage (CNN+BiLSTM)",
            algorithm_version="pe-ctpa-bundle 2.1.0",
            bundle_sha256=SHA,
        )
        sr = build_sr(analysis, sources)
        kos = build_kos(analysis, sources) if decision == "present" else None
        result.sr_sop_instance_uid = str(sr.SOPInstanceUID)
        result.kos_sop_instance_uid = str(kos.SOPInstanceUID) if kos is not None else None
        if write_files:
            folder = outbox_dir(config.data_dir, result.id)
            folder.mkdir(parents=True, exist_ok=True)
            sr.save_as(folder / "sr.dcm", enforce_file_format=True)
            if kos is not None:
                kos.save_as(folder / "kos.dcm", enforce_file_format=True)
        rows = {name: Delivery(result=result, destination=name) for name in destinations}
        session.add_all(rows.values())
        session.flush()
        return Seeded(
            result_id=result.id,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            sr_sop_instance_uid=str(sr.SOPInstanceUID),
            kos_sop_instance_uid=str(kos.SOPInstanceUID) if kos is not None else None,
            deliveries={name: row.id for name, row in rows.items()},
        )


def delivery(sessions: sessionmaker[Session], delivery_id: int) -> Delivery:
    """The delivery row as it is in the database now."""
    with sessions() as session:
        row = session.get(Delivery, delivery_id)
        assert row is not None
        return row


# ----------------------------------------------------------------------------- DICOM


@dataclass
class Received:
    """What a DICOM peer got: (SOP class, SOP instance) pairs and the proposed classes."""

    stored: list[tuple[str, str]] = field(default_factory=list)
    proposed: list[set[str]] = field(default_factory=list)
    created: list[tuple[str, Dataset]] = field(default_factory=list)
    # Each stored object's transfer syntax and encoded data set, as it came over the wire.
    encoded: list[tuple[str, bytes]] = field(default_factory=list)


def _on_store(event: evt.Event, received: Received) -> int:
    ds = event.dataset
    received.stored.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    received.proposed.append(
        {str(cx.abstract_syntax) for cx in event.assoc.requestor.requested_contexts}
    )
    received.encoded.append((str(event.context.transfer_syntax), event.request.DataSet.getvalue()))
    return 0x0000


def start_store_scp(
    port: int,
    received: Received,
    ae_title: str = "PACS",
    ssl_context: ssl.SSLContext | None = None,
    transfer_syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian),
    extra_sop_classes: tuple[str, ...] = (),
) -> ThreadedAssociationServer:
    """A Storage SCP for SR and KOS (and ``extra_sop_classes``) on ``port`` (0 for any
    free one)."""
    ae = AE(ae_title=ae_title)
    for sop in (Comprehensive3DSRStorage, KeyObjectSelectionDocumentStorage, *extra_sop_classes):
        ae.add_supported_context(sop, list(transfer_syntaxes))
    return ae.start_server(
        ("127.0.0.1", port),
        block=False,
        ssl_context=ssl_context,
        evt_handlers=[(evt.EVT_C_STORE, _on_store, [received])],
    )


def _on_create(event: evt.Event, received: Received, status: int) -> tuple[int, Dataset | None]:
    attributes = event.attribute_list
    received.created.append((str(event.request.AffectedSOPInstanceUID), attributes))
    return status, attributes if status == 0 else None


def start_ups_scp(received: Received, status: int = 0x0000) -> ThreadedAssociationServer:
    """A UPS Push SCP on a free port that answers every N-CREATE with ``status``."""
    ae = AE(ae_title="WORKLIST")
    ae.add_supported_context(
        UnifiedProcedureStepPush, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    )
    return ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_N_CREATE, _on_create, [received, status])],
    )


# ----------------------------------------------------------------------------- HL7


class MLLPListener:
    """An HL7 listener that records each message and answers an ACK of the set code."""

    def __init__(self, code: str = "AA", text: str = "") -> None:
        self.code = code
        self.text = text
        self.messages: list[str] = []
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                buffer = b""
                while b"\x1c\r" not in buffer:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                message = buffer[buffer.index(b"\x0b") + 1 : buffer.index(b"\x1c\r")].decode()
                listener.messages.append(message)
                control = message.split("\r")[0].split("|")[9]
                ack = (
                    f"MSH|^~\\&|RIS|RADIOLOGY|CTPA_TRIAGE|RADIOLOGY|20260101120000||ACK^R01^ACK|"
                    f"A{control}|P|2.5.1\rMSA|{listener.code}|{control}|{listener.text}\r"
                )
                self.request.sendall(b"\x0b" + ack.encode() + b"\x1c\r")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def segments(message: str) -> dict[str, list[list[str]]]:
    """The message's segments by name, each as its list of fields (index = field number)."""
    out: dict[str, list[list[str]]] = {}
    for segment in message.split("\r"):
        if segment:
            fields = segment.split("|")
            if fields[0] == "MSH":
                fields.insert(1, "|")  # MSH-1 is the separator itself
            out.setdefault(fields[0], []).append(fields)
    return out


# ----------------------------------------------------------------------------- webhook


class WebhookServer:
    """A local HTTP server that records each POST and answers ``status``."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.requests: list[tuple[dict[str, str], bytes]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                server.requests.append((dict(self.headers.items()), self.rfile.read(length)))
                self.send_response(server.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest's output clean

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
