"""Hostile DICOM peers, as an attacker on the network would write them (issue 12, item 1).

Each kind opens TCP connections to the receiver and misbehaves; a :class:`Swarm` keeps
N connections of a kind open for as long as it runs, reconnecting whenever the receiver
closes one, and records how long the receiver let each connection live.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

# The bytes of issue 12: a PDU of unknown type 0xFF, 4 bytes long.
UNKNOWN_PDU = bytes.fromhex("ff000000000461626364")
# An A-ASSOCIATE-RQ header claiming 0xFFFFFFF0 bytes.
HUGE_ASSOCIATE_RQ = bytes.fromhex("0100fffffff0")
# Where hostile peers connect from: loopback, but not the 127.0.0.1 of the PACS.
HOSTILE_ADDRESS = "127.0.0.2"


def connect(port: int, source: str = HOSTILE_ADDRESS) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_peer(sock: socket.socket, stop: threading.Event, timeout: float) -> bool:
    """Read until the receiver closes the connection (True), or until stop / timeout."""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def _send_then_wait(payload: bytes) -> Callable[[socket.socket, threading.Event], bool]:
    def run(sock: socket.socket, stop: threading.Event) -> bool:
        sock.sendall(payload)
        return closed_by_peer(sock, stop, 600)

    return run


def _drip(prefix: bytes, drip: bytes) -> Callable[[socket.socket, threading.Event], bool]:
    """Send ``prefix``, then one byte of ``drip`` a second, until closed."""

    def run(sock: socket.socket, stop: threading.Event) -> bool:
        sock.sendall(prefix)
        sock.settimeout(1.0)
        for byte in drip:
            try:
                sock.sendall(bytes([byte]))
                if not sock.recv(65536):
                    return True
            except TimeoutError:
                pass  # nothing from the receiver this second: drip on
            except OSError:
                return True
            if stop.is_set():
                return False
        return closed_by_peer(sock, stop, 600)

    return run


def _random_bytes(seed: int) -> Callable[[socket.socket, threading.Event], bool]:
    rng = random.Random(seed)

    def run(sock: socket.socket, stop: threading.Event) -> bool:
        data = rng.randbytes(64)
        # Garbage, not a PDU: a first byte of 0x01-0x07 is a PDU type whose header the
        # receiver rightly waits to complete until its timeout (drip_header's case). The
        # generator is shared by every use in the session, so without this the bytes of a
        # test depended on the tests before it, and one draw in 37 began with such a type.
        while 0x01 <= data[0] <= 0x07:
            data = rng.randbytes(64)
        sock.sendall(data)
        return closed_by_peer(sock, stop, 600)

    return run


def associate_rq(calling: str = "HOSTILE", called: str = "TRIAGE") -> bytes:
    """A valid A-ASSOCIATE-RQ PDU proposing CT Image Storage, built with pynetdicom."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        MaximumLengthNotification,
    )
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3.4"
    primitive.user_information = [max_length, implementation]
    context = build_context(CTImageStorage, ExplicitVRLittleEndian)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def drip_p_data(port: int, stop: threading.Event, source: str = HOSTILE_ADDRESS) -> float | None:
    """Associate properly, then drip a P-DATA-TF PDU 1 byte a second; seconds until closed.

    Raw sockets rather than a pynetdicom AE: 16 of these must not cost the test's CPUs.
    """
    with connect(port, source) as sock:
        sock.sendall(associate_rq())
        reply = sock.recv(1)
        if reply != b"\x02":  # not an A-ASSOCIATE-AC
            return None
        sock.settimeout(0.2)
        try:  # the rest of the A-ASSOCIATE-AC
            while sock.recv(65536):
                pass
        except TimeoutError:
            pass
        start = time.monotonic()
        # P-DATA-TF of 1000 bytes, of which the header and then one byte a second are sent.
        sock.sendall(struct.pack(">BBL", 0x04, 0, 1000))
        closed = _drip(b"", bytes(994))(sock, stop)
        return time.monotonic() - start if closed else None


KINDS: dict[str, Callable[[socket.socket, threading.Event], bool]] = {
    "unknown_pdu": _send_then_wait(UNKNOWN_PDU),
    "huge_associate_rq": _send_then_wait(HUGE_ASSOCIATE_RQ + bytes(4096)),
    # A header claiming 200 bytes, then one byte a second of them.
    "drip_associate_rq": _drip(struct.pack(">BBL", 0x01, 0, 200), bytes(200)),
    # The header itself, one byte a second.
    "drip_header": _drip(b"", struct.pack(">BBL", 0x01, 0, 200) + bytes(200)),
    "random_bytes": _random_bytes(12),
}


@dataclass
class Swarm:
    """``count`` connections of one kind, each reopened when the receiver closes it."""

    kind: str
    port: int
    count: int = 16
    stop: threading.Event = field(default_factory=threading.Event)
    lifetimes: list[float] = field(default_factory=list)  # seconds until the receiver closed
    errors: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Swarm:
        for _ in range(self.count):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.kind == "drip_p_data":
                    elapsed = drip_p_data(self.port, self.stop)
                    if elapsed is not None:
                        self.lifetimes.append(elapsed)
                else:
                    with connect(self.port) as sock:
                        start = time.monotonic()
                        if KINDS[self.kind](sock, self.stop):
                            self.lifetimes.append(time.monotonic() - start)
            except OSError as err:  # refused or reset: the receiver is shedding us
                self.errors.append(type(err).__name__)
            self.stop.wait(0.2)  # an attacker would not wait; the test's two CPUs must

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(10)
