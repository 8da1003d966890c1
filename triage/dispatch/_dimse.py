"""What the DICOM senders share: the association set-up, TLS and status checks."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from triage.dispatch.context import DeliveryError

# pynetdicom has one switch, process-wide, for sending a file as it lies on disk rather
# than decoding and encoding it again; set once, here, by the module every DICOM sender
# of the daemon imports (not on every send). Every C-STORE of a file path in this
# process then streams the file, which needs an accepted context in the file's own
# transfer syntax: the senders here propose exactly that, and so does `triage send`.
pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True

# Generous for a PACS under load, short enough that one dead peer does not hold its
# destination's sends (the others have their own threads) for minutes.
CONNECTION_TIMEOUT = 10.0
NETWORK_TIMEOUT = 30.0


def _on_connection(event: evt.Event, opened: list[bool]) -> None:
    # pynetdicom reports a refused connection as an abort; this tells the two apart.
    opened.append(True)
    # Nagle's algorithm would hold each small request PDU for the peer's delayed ACK.
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def client_ssl_context(ca_certificate: Path | None) -> ssl.SSLContext:
    """A TLS client context that verifies the peer, against ``ca_certificate`` if given."""
    try:
        return ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(ca_certificate) if ca_certificate else None
        )
    except (OSError, ssl.SSLError) as err:
        raise DeliveryError(
            f"cannot load ca_certificate {ca_certificate}: {err}; fix the destination's "
            "ca_certificate and run `triage retry`",
            permanent=True,
        ) from err


def associate(
    *,
    calling_ae_title: str,
    ae_title: str,
    host: str,
    port: int,
    contexts: list[PresentationContext],
    tls: bool = False,
    ca_certificate: Path | None = None,
) -> Association:
    """Open an association proposing only ``contexts``, or raise :class:`DeliveryError`."""
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = CONNECTION_TIMEOUT
    ae.acse_timeout = NETWORK_TIMEOUT
    ae.dimse_timeout = NETWORK_TIMEOUT
    ae.network_timeout = NETWORK_TIMEOUT
    ae.requested_contexts = contexts
    tls_args = (client_ssl_context(ca_certificate), host) if tls else None
    opened: list[bool] = []
    assoc = ae.associate(
        host,
        port,
        ae_title=ae_title,
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_CONN_OPEN, _on_connection, [opened])],
    )
    if assoc.is_established:
        return assoc
    peer = f"{ae_title}@{host}:{port}"
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        # Result 1 is rejected-permanent (an unknown AE title, say); 2 is transient.
        permanent = primitive is not None and primitive.result == 0x01
        reason = primitive.reason_str if primitive is not None else "no reason given"
        raise DeliveryError(f"association rejected by {peer}: {reason}", permanent=permanent)
    if not opened:
        raise DeliveryError(f"cannot connect to {peer} (nothing listening, or TLS failed)")
    raise DeliveryError(f"association with {peer} aborted or timed out during negotiation")


def read_file(path: Path, what: str) -> Dataset:
    """Read one outbox file; a missing file is retried (the worker may still write it)."""
    try:
        return dcmread(path)
    except FileNotFoundError as err:
        raise DeliveryError(f"the {what} {path} does not exist (yet)") from err
    except (InvalidDicomError, OSError, ValueError) as err:
        raise DeliveryError(f"cannot read the {what} {path}: {err}", permanent=True) from err


def store_file(assoc: Association, path: Path) -> Dataset | None:
    """C-STORE the file at ``path`` as its bytes lie on disk, without re-encoding it.

    The accepted context must have the file's transfer syntax. Handed a dataset,
    pynetdicom encodes it again element by element, which takes ~0.1 s for an SR's
    nested content tree; streamed from the file it takes a millisecond.
    """
    return assoc.send_c_store(path)


def status_code(status: Dataset | None) -> int | None:
    """The DIMSE status of a response, or None when none came back."""
    if status is None or "Status" not in status:
        return None
    return int(status.Status)


def is_success_or_warning(code: int) -> bool:
    """Success (0x0000) and warnings (0x0001, 0xB000-0xBFFF) mean the peer has it."""
    return code in (0x0000, 0x0001) or 0xB000 <= code <= 0xBFFF
