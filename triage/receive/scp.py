"""The DICOM receiver: a Storage SCP (plus Verification) that the PACS forwards to.

Every storage SOP class is accepted with every transfer syntax: a PACS forwards whole
studies, and must never see a failure for a dose report we will simply ignore.
Failures become DIMSE statuses here, at the network edge, and nowhere else.
"""

from __future__ import annotations

import errno
import os
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from triage.config import ReceiverConfig
from triage.db.models import utcnow
from triage.errors import InvalidUIDError, TriageError
from triage.logs import describe_db_error, get_logger
from triage.receive.header import ReceivedInstance, UnreadableDatasetError, parse_header
from triage.receive.integrity import IncompleteDatasetError, check_dataset, dataset_offset
from triage.receive.part10 import file_header
from triage.receive.recorder import InstanceRecorder
from triage.receive.transport import (
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    ConnectionLimits,
    GuardedAssociationServer,
    ReceiverAE,
)
from triage.storage.spool import free_disk_mb, instance_path, write_durably

log = get_logger(__name__)

# DIMSE statuses (PS3.4 Annex B.2.3, PS3.7 Annex C).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
CANNOT_DECODE = 0xC210


@dataclass(frozen=True)
class StoreTarget:
    """Where and how the C-STORE handler writes: the spool, the disk floor, the recorder."""

    spool: Path
    min_free_disk_mb: int
    recorder: InstanceRecorder


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]  # LO: at most 64 characters
    return ds


def _encoded_dataset(event: evt.Event, request: C_STORE, calling: str) -> bytes:
    """The received dataset as a DICOM file: what ``event.encoded_dataset()`` returns."""
    stream = getattr(request, "DataSet", None)
    if not isinstance(stream, BytesIO):
        # Anything but pynetdicom's usual in-memory stream (its chunked, on-disk mode, for
        # one) goes through pynetdicom, which knows how to read it.
        return event.encoded_dataset()
    # Same bytes, without the pydicom FileMetaDataset that costs ~0.6 ms per instance.
    meta = file_header(
        str(request.AffectedSOPClassUID or ""),
        str(request.AffectedSOPInstanceUID or ""),
        str(event.context.transfer_syntax),
        calling,
    )
    return meta + stream.getvalue()


def handle_store(event: evt.Event, target: StoreTarget) -> int | Dataset:
    """Store one instance durably, then answer Success; answer a failure status otherwise."""
    request = cast(C_STORE, event.request)
    calling = event.assoc.requestor.ae_title
    req_sop = str(request.AffectedSOPInstanceUID or "")
    bound = log.bind(calling_aet=calling, sop_instance_uid=req_sop[:64])

    if free_disk_mb(target.spool) < target.min_free_disk_mb:
        bound.error(
            "store_refused_disk_full",
            status=OUT_OF_RESOURCES,
            min_free_disk_mb=target.min_free_disk_mb,
        )
        return _failure(OUT_OF_RESOURCES, "receiver disk is full")

    data = _encoded_dataset(event, request, calling)
    try:
        header = parse_header(data)
    except UnreadableDatasetError as err:
        bound.warning("store_refused_unreadable", status=CANNOT_DECODE, reason=str(err))
        return _failure(CANNOT_DECODE, "dataset cannot be parsed")

    bound = bound.bind(
        study_instance_uid=header.study_instance_uid[:64],
        series_instance_uid=header.series_instance_uid[:64],
    )
    if header.sop_instance_uid != req_sop or header.sop_class_uid != request.AffectedSOPClassUID:
        bound.warning(
            "store_refused_uid_mismatch",
            status=DATASET_DOES_NOT_MATCH_SOP_CLASS,
            dataset_sop_instance_uid=header.sop_instance_uid[:64],
        )
        return _failure(
            DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class/Instance UID differs from request"
        )
    try:
        check_dataset(data, dataset_offset(data), header.transfer_syntax_uid, header.sop_class_uid)
    except IncompleteDatasetError as err:
        # A truncated or corrupt instance must not be acknowledged: the PACS would never
        # resend it, and the series would be analysed without it, or not at all.
        bound.warning("store_refused_incomplete", status=CANNOT_DECODE, reason=str(err))
        return _failure(CANNOT_DECODE, "dataset is truncated or corrupt")
    try:
        path = instance_path(
            target.spool,
            header.study_instance_uid,
            header.series_instance_uid,
            header.sop_instance_uid,
        )
    except InvalidUIDError as err:
        bound.warning("store_refused_invalid_uid", status=CANNOT_UNDERSTAND, reason=str(err))
        return _failure(CANNOT_UNDERSTAND, "invalid UID in dataset")

    try:
        size = write_durably(path, data)
    except OSError as err:
        reason = "disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        bound.error("store_failed_write", status=OUT_OF_RESOURCES, reason=reason)
        return _failure(OUT_OF_RESOURCES, f"cannot write: {reason}")

    try:
        target.recorder.record(
            ReceivedInstance(
                header=header,
                file_path=str(path.relative_to(target.spool)),
                file_size=size,
                received_at=utcnow(),
            )
        )
    except Exception as err:  # any database failure: the PACS will resend, idempotently
        bound.error("store_failed_database", status=OUT_OF_RESOURCES, reason=describe_db_error(err))
        return _failure(OUT_OF_RESOURCES, "cannot record instance")

    bound.debug("instance_stored", bytes=size)
    return SUCCESS


def handle_echo(event: evt.Event) -> int:
    """Answer C-ECHO, so the PACS admin can verify the node."""
    log.info("echo", calling_aet=event.assoc.requestor.ae_title)
    return SUCCESS


def _handle_conn_open(event: evt.Event) -> None:
    # Without TCP_NODELAY, Nagle's algorithm holds each small C-STORE-RSP until the
    # peer's delayed ACK (40 ms on Linux): that alone caps a stream at ~25 images/s.
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _handle_accepted(event: evt.Event) -> None:
    # The pid tells an admin which receiver process (receiver.processes > 1) served it.
    log.info(
        "association_accepted",
        calling_aet=event.assoc.requestor.ae_title,
        peer=event.assoc.requestor.address,
        pid=os.getpid(),
    )


def _handle_rejected(event: evt.Event) -> None:
    log.warning(
        "association_rejected",
        calling_aet=event.assoc.requestor.ae_title,
        peer=event.assoc.requestor.address,
        reason="calling AE title is not in receiver.allowed_calling_aets",
    )


def _handle_released(event: evt.Event) -> None:
    log.info("association_released", calling_aet=event.assoc.requestor.ae_title)


def _handle_aborted(event: evt.Event) -> None:
    log.warning("association_aborted", calling_aet=event.assoc.requestor.ae_title)


def build_ssl_context(cfg: ReceiverConfig) -> ssl.SSLContext | None:
    """The server-side TLS context, or None when TLS is off."""
    tls = cfg.tls
    if not tls.enabled:
        return None
    assert tls.certificate is not None and tls.private_key is not None  # checked by config
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.certificate, tls.private_key, tls.private_key_password)
        if tls.ca_certificate is not None:
            context.load_verify_locations(cafile=str(tls.ca_certificate))
    except (OSError, ssl.SSLError) as err:
        raise TriageError(
            f"cannot load the receiver's TLS certificate, key or CA: {err}; "
            "check receiver.tls in the configuration"
        ) from err
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
    return context


def build_ae(cfg: ReceiverConfig) -> AE:
    """An Application Entity with every storage context and Verification."""
    ae = ReceiverAE(ae_title=cfg.ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(cast(str, context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    ae.maximum_associations = cfg.max_associations
    ae.maximum_pdu_size = cfg.max_pdu
    ae.acse_timeout = cfg.acse_timeout
    ae.dimse_timeout = cfg.dimse_timeout
    ae.network_timeout = cfg.network_timeout
    if cfg.allowed_calling_aets:
        ae.require_calling_aet = list(cfg.allowed_calling_aets)
    return ae


def connection_limits(cfg: ReceiverConfig) -> ConnectionLimits:
    """The receiver's deadlines and limits on connections that are not associations yet."""
    return ConnectionLimits(
        network_timeout=cfg.network_timeout,
        acse_timeout=cfg.acse_timeout,
        max_pending=cfg.max_pending_connections,
        max_pending_per_address=cfg.max_pending_per_address,
    )


class Receiver:
    """The running Storage SCP, with a graceful stop."""

    def __init__(
        self, cfg: ReceiverConfig, target: StoreTarget, *, reuse_port: bool = False
    ) -> None:
        """Bind ``cfg.host:cfg.port`` and start accepting associations in a thread.

        ``reuse_port`` lets several receiver processes listen on the same port
        (see :class:`triage.receive.transport.GuardedAssociationServer`).
        """
        self.cfg = cfg
        self.ae = build_ae(cfg)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, handle_store, [target]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_CONN_OPEN, _handle_conn_open),
            (evt.EVT_ACCEPTED, _handle_accepted),
            (evt.EVT_REJECTED, _handle_rejected),
            (evt.EVT_RELEASED, _handle_released),
            (evt.EVT_ABORTED, _handle_aborted),
        ]
        if not cfg.allowed_calling_aets:
            log.warning(
                "calling_aet_allow_list_empty",
                detail="any calling AE title is accepted; set receiver.allowed_calling_aets",
            )
        server = self.ae.make_server(
            (cfg.host, cfg.port),
            evt_handlers=handlers,
            ssl_context=build_ssl_context(cfg),
            server_class=GuardedAssociationServer,
            limits=connection_limits(cfg),
            reuse_port=reuse_port,
        )
        self.server = cast(GuardedAssociationServer, server)
        # What ``AE.start_server(block=False)`` does, which cannot take a server class.
        # The server is not registered with the AE: stop() shuts it down itself.
        threading.Thread(
            target=self.server.serve_forever, name="dicom-acceptor", daemon=True
        ).start()
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (useful when the configuration asked for port 0)."""
        return int(self.server.server_address[1])

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting associations, let those in flight finish, abort after ``timeout``.

        Returns within about ``timeout`` + 2 seconds whatever the peers do: connections
        still open then are shut down, so that no thread waits on a peer.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        timeout = self.cfg.shutdown_timeout if timeout is None else timeout
        # Stop the accept loop and close the listening socket first: new associations
        # are refused while the ones in flight carry on.
        socketserver.BaseServer.shutdown(self.server)
        if self.server.socket is not None:
            self.server.socket.close()
        deadline = time.monotonic() + timeout
        while self._requested() and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self._requested():
            if assoc.is_established:
                log.warning("association_aborted_on_shutdown", calling_aet=assoc.requestor.ae_title)
                assoc.abort(block=False)  # queued: sent unless the DUL is stuck on a peer
        _wait_for_threads(self.server.active_associations, time.monotonic() + 1.0)
        closed = self.server.close_connections()
        if closed:
            log.info("connections_closed_on_shutdown", count=closed)
        # The reactors of the closed associations still run their abort handlers (which
        # log): wait for them too, under the same second, so none logs after stop returns.
        last = time.monotonic() + 1.0
        _wait_for_threads([a.dul for a in self.server.active_associations], last)
        _wait_for_threads(self.server.active_associations, last)

    def _requested(self) -> list[Association]:
        # Connections that never sent an A-ASSOCIATE-RQ have nothing to finish.
        return [a for a in self.server.active_associations if a.requestor.primitive is not None]


def _wait_for_threads(threads: Sequence[threading.Thread], deadline: float) -> None:
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
