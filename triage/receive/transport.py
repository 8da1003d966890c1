"""The receiver's transport: pynetdicom's association server, with deadlines and limits.

pynetdicom reads each PDU with blocking socket calls that have no timeout, counts every
open TCP connection as an association, and after an A-ABORT waits for the peer to
close. A peer that sends a few bytes and stops therefore held one of
``max_associations`` for as long as it liked, and a SIGTERM waited for it too. This
module keeps pynetdicom's state machine, ACSE and DIMSE, and changes only what lies
under them:

- every read has a deadline: a PDU that has begun must be complete within
  ``network_timeout``, and a connection must have sent its whole A-ASSOCIATE-RQ within
  ``acse_timeout`` of connecting (:class:`DeadlineSocket`);
- a PDU's length is checked when its header arrives, before its body is buffered: before
  the association, no PDU may exceed :data:`MAX_ASSOCIATE_PDU_LENGTH`; after it, a
  P-DATA-TF may not exceed the maximum length we advertised;
- after sending an A-ABORT, the connection is closed at once;
- connections that are not yet associations are limited apart from associations, in
  all and per peer address, and only associations count towards
  ``max_associations`` (:class:`GuardedAssociationServer`, :class:`ReceiverAE`);
- a TLS handshake runs in the connection's own thread, with a deadline, not in the
  thread that accepts connections;
- on shutdown, every connection still open is closed (:meth:`close_connections`).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from triage.logs import get_logger

log = get_logger(__name__)

# The largest PDU accepted before the association: an A-ASSOCIATE-RQ with 128
# presentation contexts, each offering 28 transfer syntaxes of 64-character UIDs, and a
# user-identity item, is under 256 KiB. Larger claims are refused from the header alone.
MAX_ASSOCIATE_PDU_LENGTH = 256 * 1024
_HEADER = 6  # PDU type, reserved, 4-byte length (PS3.8 9.3.1)
_P_DATA_TF = 0x04
_A_ABORT = 0x07
_KNOWN_PDU_TYPES = range(0x01, 0x08)
# DUL states before an association exists (PS3.8 9.2): idle, before the connection is
# handled (Sta1), awaiting the A-ASSOCIATE-RQ (Sta2), awaiting our response to it (Sta3).
_NEGOTIATION_STATES = ("Sta1", "Sta2", "Sta3")
# C-STORE status "Data Set does not match SOP Class" (PS3.4 B.2.3).
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
# At most one "connection_refused" line per peer address in this many seconds.
_REFUSAL_LOG_INTERVAL = 10.0
# The receive buffer's first size; it doubles as a longer PDU arrives.
_FIRST_BUFFER = 1024 * 1024


class PDURefusedError(ConnectionAbortedError):
    """A PDU's header claims a length that is not accepted; the connection is aborted."""


@dataclass(frozen=True)
class ConnectionLimits:
    """What a peer may hold, and for how long (from ``receiver`` in the configuration)."""

    network_timeout: float
    acse_timeout: float
    max_pending: int
    max_pending_per_address: int


class DeadlineSocket(AssociationSocket):
    """pynetdicom's socket wrapper, with a deadline on every read and PDU length checks.

    pynetdicom's DUL reads a PDU in two calls, its 6-byte header and then its body, and
    only once ``select`` says that data is waiting. The header is checked here before
    the body is read, and the body must arrive by the deadline set when the header began.
    """

    def __init__(
        self, assoc: Association, client_socket: socket.socket, limits: ConnectionLimits
    ) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self.limits = limits
        self._negotiation_deadline = time.monotonic() + limits.acse_timeout
        self._body_length: int | None = None
        self._pdu_deadline = 0.0

    def _negotiating(self) -> bool:
        # The DUL's own state, not ``assoc.is_established``: the DUL thread that reads
        # here is the one that sent the A-ASSOCIATE-AC, so a P-DATA PDU that follows the
        # AC at once is never taken for part of the negotiation.
        return self.assoc.dul.state_machine.current_state in _NEGOTIATION_STATES

    def _deadline(self) -> float:
        deadline = time.monotonic() + self.limits.network_timeout
        if self._negotiating():
            deadline = min(deadline, self._negotiation_deadline)
        return deadline

    @property
    def ready(self) -> bool:
        """Whether the DUL should read now: data is waiting, and no event is.

        pynetdicom's DUL reads before it handles the events already queued, so after an
        invalid PDU it would read the bytes behind it (and wait on them) before sending
        its A-ABORT. Holding reads back until the queue is empty sends the A-ABORT first.
        """
        if not self.event_queue.empty():
            return False
        return bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` by the PDU's deadline; fewer only if the peer closed.

        Raises
        ------
        TimeoutError
            If the deadline passes first (pynetdicom's DUL treats it as a closed
            connection, and the association ends).
        PDURefusedError
            If a PDU header claims a length that is not accepted.
        """
        if self._body_length is not None and nr_bytes == self._body_length:
            deadline = self._pdu_deadline  # the body of the PDU whose header was read
        else:
            deadline = self._deadline()
        self._body_length = None
        data = self._read(nr_bytes, deadline)
        if nr_bytes == _HEADER and len(data) == _HEADER:
            pdu_type, _, length = struct.unpack(">BBL", data)
            if pdu_type in _KNOWN_PDU_TYPES:  # the DUL reads the body of these only
                self._check_length(pdu_type, length)
                self._body_length, self._pdu_deadline = length, deadline
        return data

    def _read(self, nr_bytes: int, deadline: float) -> bytearray:
        sock = cast(socket.socket, self.socket)
        # Received into one buffer, without a bytes object per chunk. It is sized for
        # what has arrived, not for what the header claims: with max_pdu 0 a claim is
        # unbounded, so the buffer only doubles as data comes in.
        data = bytearray(min(nr_bytes, _FIRST_BUFFER))
        got = 0
        while got < nr_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the peer did not send a whole PDU in time")
            if got == len(data):
                data.extend(bytes(min(len(data), nr_bytes - got)))
            sock.settimeout(remaining)
            try:
                with memoryview(data) as view:
                    count = sock.recv_into(view[got:])
            except TimeoutError as err:
                raise TimeoutError("the peer did not send a whole PDU in time") from err
            if not count:
                del data[got:]  # the peer closed: the DUL sees a short read
                break
            got += count
        return data

    def _check_length(self, pdu_type: int, length: int) -> None:
        if pdu_type == _P_DATA_TF and not self._negotiating():
            # What we advertised as our maximum length received (0: no limit).
            limit = self.assoc.acceptor.maximum_length or 0
        else:
            limit = MAX_ASSOCIATE_PDU_LENGTH
        if limit and length > limit:
            log.warning(
                "pdu_refused",
                peer=self.assoc.requestor.address,
                pdu_type=pdu_type,
                length=length,
                limit=limit,
            )
            self._send_abort()
            raise PDURefusedError(f"PDU type {pdu_type:#04x} of {length} bytes exceeds {limit}")

    def _send_abort(self) -> None:
        # A-ABORT from the service provider, reason "invalid PDU parameter value"
        # (PS3.8 9.3.8); best effort, the connection is closed next anyway.
        pdu = A_ABORT_RQ()
        pdu.source = 0x02
        pdu.reason_diagnostic = 0x06
        sock = cast(socket.socket, self.socket)
        try:
            sock.settimeout(1.0)
            sock.sendall(pdu.encode())
        except OSError:
            pass

    def send(self, bytestream: bytes) -> None:
        """Send within ``network_timeout``; after an A-ABORT, close the connection at once.

        PS3.8 lets the sender of an A-ABORT wait (ARTIM) for the peer to close; a peer
        that never does would keep the connection, so it is closed here.
        """
        if self.socket is not None:
            self.socket.settimeout(self.limits.network_timeout)
        super().send(bytestream)
        if bytestream[:1] == bytes([_A_ABORT]):
            self.close()


class ReceiverAssociation(Association):
    """An acceptor association that answers every C-STORE request it can respond to."""

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if isinstance(msg, C_STORE) and msg.AffectedSOPInstanceUID is None and msg.MessageID:
            # pynetdicom drops a request without an Affected SOP Instance UID unanswered,
            # and the sender would wait out its own timeout; answer it with a failure.
            log.warning(
                "store_refused_no_request_uid",
                calling_aet=self.requestor.ae_title,
                status=DATASET_DOES_NOT_MATCH_SOP_CLASS,
            )
            rsp = C_STORE()
            rsp.MessageIDBeingRespondedTo = msg.MessageID
            rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
            rsp.Status = DATASET_DOES_NOT_MATCH_SOP_CLASS
            rsp.ErrorComment = "request has no Affected SOP Instance UID"  # type: ignore[assignment]
            self.dimse.send_msg(rsp, context_id)
            return
        super()._serve_request(msg, context_id)


class ReceiverAE(AE):
    """An AE whose association limit counts associations, not connections.

    pynetdicom counts every acceptor thread, including connections that have not sent
    an A-ASSOCIATE-RQ (and may never); those are limited by
    :class:`GuardedAssociationServer` instead.
    """

    @property
    def active_associations(self) -> list[Association]:
        """The associations that have been requested (or that we requested)."""
        return [
            assoc
            for assoc in super().active_associations
            if assoc.is_requestor or assoc.requestor.primitive is not None
        ]


class GuardedRequestHandler(RequestHandler):
    """Runs one connection: the TLS handshake (with a deadline), then the association."""

    server: GuardedAssociationServer

    def handle(self) -> None:
        """Finish the TLS handshake, if any, then start the association's thread."""
        limits = self.server.limits
        sock = cast(socket.socket, self.request)
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.settimeout(min(limits.network_timeout, limits.acse_timeout))
                sock.do_handshake()
            except (OSError, ValueError) as err:
                log.warning("tls_handshake_failed", peer=self.client_address[0], error=str(err))
                self.server.shutdown_request(sock)
                return
        super().handle()

    def _create_association(self) -> Association:
        """pynetdicom's ``RequestHandler._create_association``, with this module's classes."""
        assoc = ReceiverAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{timestamp}"
        assoc.set_socket(
            DeadlineSocket(assoc, cast(socket.socket, self.request), self.server.limits)
        )

        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote

        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *cast(tuple[Any, Any], handlers))
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in cast(list[Any], handlers):
                    assoc.bind(event, handler, args)
        return assoc


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server, with limits on unassociated connections.

    A connection is *pending* from the moment it is accepted until its association is
    established or it closes. Pending connections are limited in all
    (``max_pending``) and per peer address (``max_pending_per_address``); one over
    either limit is closed at once. Each is bounded in time by the ACSE timeout.
    """

    # socketserver's default backlog of 5 would drop a PACS's SYNs while hostile
    # connections arrive in a burst, before they can be refused.
    request_queue_size = 128

    def __init__(
        self,
        ae: AE,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[Any],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
        *,
        limits: ConnectionLimits,
        reuse_port: bool = False,
    ) -> None:
        self.limits = limits
        self.reuse_port = reuse_port
        self._lock = threading.Lock()
        # Every accepted socket still open, and whether it is an association yet.
        self._connections: dict[socket.socket, _Connection] = {}
        self._refusals: dict[str, tuple[float, int]] = {}  # peer: (last logged, refused since)
        super().__init__(
            ae,
            address,
            ae_title,
            contexts,
            ssl_context,
            evt_handlers=evt_handlers,
            request_handler=GuardedRequestHandler,
        )
        self.bind(evt.EVT_ACCEPTED, self._on_accepted)

    def server_bind(self) -> None:
        """With ``reuse_port``, set SO_REUSEPORT; then bind as pynetdicom does.

        SO_REUSEPORT lets N receiver processes share the port (Linux spreads connections
        over them). It is set only on request: otherwise a second daemon started by
        mistake would silently share the port instead of failing to bind.
        """
        if self.reuse_port:
            assert self.socket is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection; TLS is set up here but its handshake runs in its thread."""
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self.limits.network_timeout)
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a connection unless too many are pending, in all or from its address."""
        peer = str(client_address[0])
        with self._lock:
            # A connection closed by its own thread, however it ended, is forgotten here.
            self._connections = {s: c for s, c in self._connections.items() if s.fileno() != -1}
            pending = [c for c in self._connections.values() if not c.associated]
            from_peer = sum(1 for c in pending if c.peer == peer)
            admit = (
                len(pending) < self.limits.max_pending
                and from_peer < self.limits.max_pending_per_address
            )
            if admit:
                self._connections[request] = _Connection(peer)
        if not admit:
            self._log_refusal(peer, len(pending), from_peer)
        return admit

    def _log_refusal(self, peer: str, pending: int, from_peer: int) -> None:
        # At most one line per peer every _REFUSAL_LOG_INTERVAL: a peer that reconnects
        # in a loop must not fill the disk with log lines.
        now = time.monotonic()
        if len(self._refusals) > 1024:  # many addresses (IPv6): forget the quiet ones
            self._refusals = {
                p: v for p, v in self._refusals.items() if now - v[0] < _REFUSAL_LOG_INTERVAL
            }
        last, count = self._refusals.get(peer, (0.0, 0))
        if now - last < _REFUSAL_LOG_INTERVAL:
            self._refusals[peer] = (last, count + 1)
            return
        self._refusals[peer] = (now, 0)
        log.warning(
            "connection_refused",
            peer=peer,
            reason="too many connections that are not associations yet",
            pending=pending,
            pending_from_peer=from_peer,
            refused_since_last_line=count,
        )

    def _on_accepted(self, event: evt.Event) -> None:
        # From now on the connection counts as an association, not as pending.
        dul_socket = event.assoc.dul.socket
        sock = dul_socket.socket if dul_socket is not None else None
        with self._lock:
            connection = self._connections.get(sock) if sock is not None else None
            if connection is not None:
                connection.associated = True

    def close_connections(self) -> int:
        """Shut down every connection still open, so that no read waits on a peer.

        Returns how many were open.
        """
        with self._lock:
            still_open = [s for s in self._connections if s.fileno() != -1]
            self._connections.clear()
        for sock in still_open:
            with contextlib.suppress(OSError):  # closed by its own thread meanwhile
                sock.shutdown(socket.SHUT_RDWR)
        return len(still_open)


@dataclass
class _Connection:
    """An accepted connection: its peer address, and whether it is an association yet."""

    peer: str
    associated: bool = False
