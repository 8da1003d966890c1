"""Hostile peers against the receiver (issue 12, item 1): every read has a deadline, a
PDU's length is checked before its body is buffered, an A-ABORT closes the connection,
and connections that are not associations yet cannot use up the associations.

The receiver runs with 2-second timeouts so that each case ends in seconds.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from daemon_proc import Daemon
from dicom_factory import write_series
from hostile import HOSTILE_ADDRESS, KINDS, Swarm, closed_by_peer, connect, drip_p_data
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from support import dcmtk

TIMEOUTS = {"network_timeout": 2.0, "acse_timeout": 2.0}


def _echo(port: int) -> int:
    """C-ECHO status of a new association: the receiver still serves after a hostile peer.

    One immediate retry: the receiver here gives a whole A-ASSOCIATE-RQ only 2 s, and a CI
    run on a loaded 2-core machine once saw this association aborted right after an
    unknown PDU (40 local repeats under a training job's load did not reproduce it). A
    receiver locked out by the hostile peer fails both attempts, as nothing is waited for
    between them.
    """
    for attempt in (1, 2):
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
        if assoc.is_established or attempt == 2:
            break
    # Say how it failed: a rejection or abort is the receiver's answer, neither is a timeout.
    assert assoc.is_established, (
        f"the association was not accepted: rejected={assoc.is_rejected}, "
        f"aborted={assoc.is_aborted}"
    )
    status = int(assoc.send_c_echo().Status)
    assoc.release()
    return status


def _lifetime(port: int, kind: str) -> float:
    """Seconds from connecting until the receiver closed a connection of this kind."""
    stop = threading.Event()
    with connect(port) as sock:
        start = time.monotonic()
        closed = KINDS[kind](sock, stop) if kind != "wait" else closed_by_peer(sock, stop, 30)
    assert closed, f"{kind}: the receiver never closed the connection"
    return time.monotonic() - start


@pytest.mark.parametrize(
    ("kind", "within"),
    [
        ("unknown_pdu", 1.0),  # A-ABORT, then closed at once
        ("random_bytes", 1.0),
        ("huge_associate_rq", 1.0),  # refused from its header
        ("drip_associate_rq", 4.0),  # the ACSE timeout (2 s) bounds the request
        ("drip_header", 4.0),
        ("wait", 4.0),  # connects and sends nothing
    ],
)
def test_hostile_connection_is_closed_in_time(start_receiver, kind: str, within: float) -> None:
    rx = start_receiver(receiver=TIMEOUTS)
    assert _lifetime(rx.port, kind) < within
    assert _echo(rx.port) == 0x0000


def test_unknown_pdu_gets_an_a_abort_and_the_socket_is_closed(start_receiver) -> None:
    rx = start_receiver(receiver=TIMEOUTS)
    with connect(rx.port) as sock:
        sock.sendall(bytes.fromhex("ff000000000461626364"))
        sock.settimeout(1.0)
        reply = b""
        while chunk := sock.recv(100):
            reply += chunk
    assert reply[:1] == b"\x07", "the receiver answered with an A-ABORT PDU"
    assert len(reply) == 10  # and then EOF: nothing else, and the socket closed


def test_oversized_associate_rq_is_refused_before_it_is_buffered(start_receiver) -> None:
    """0xFFFFFFF0 bytes claimed, then zeros: the receiver stops reading after the header."""
    rx = start_receiver(receiver=TIMEOUTS)
    sent = 0
    with connect(rx.port) as sock:
        sock.settimeout(2.0)
        sock.sendall(bytes.fromhex("0100fffffff0"))
        zeros = bytes(1 << 20)
        with pytest.raises(OSError):  # reset or broken pipe once the receiver has closed
            while sent < 300 << 20:
                sent += sock.send(zeros)
    # Only what the kernel's buffers took before the close, not 300 MiB.
    assert sent < 32 << 20


def test_p_data_larger_than_the_negotiated_maximum_is_aborted(start_receiver) -> None:
    rx = start_receiver(receiver={**TIMEOUTS, "max_pdu": 16384})
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", rx.port, ae_title="TRIAGE")
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 16384
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert raw is not None
    start = time.monotonic()
    raw.sendall(struct.pack(">BBL", 0x04, 0, 1 << 20) + bytes(4096))
    while assoc.is_established and time.monotonic() - start < 5:
        time.sleep(0.05)
    assert assoc.is_aborted
    assert time.monotonic() - start < 1.0


def test_p_data_dripped_one_byte_a_second_is_aborted_after_the_network_timeout(
    start_receiver,
) -> None:
    rx = start_receiver(receiver=TIMEOUTS)
    # None: the association was not accepted. One immediate retry, as in _echo: a CI run
    # on a loaded 2-core machine once saw the first A-ASSOCIATE-RQ go unaccepted within
    # the 2-s ACSE timeout. A receiver that never accepts fails both attempts.
    for _ in (1, 2):
        elapsed = drip_p_data(rx.port, threading.Event(), source="127.0.0.1")
        if elapsed is not None:
            break
    assert elapsed is not None and elapsed < 4.0
    assert _echo(rx.port) == 0x0000


def test_pending_connections_are_limited_per_address_not_counted_as_associations(
    start_receiver,
) -> None:
    """Silent connections from one address use up that address's pending slots only."""
    rx = start_receiver(
        receiver={
            "network_timeout": 30.0,
            "acse_timeout": 30.0,
            "max_associations": 2,
            "max_pending_per_address": 4,
        }
    )
    silent = [connect(rx.port) for _ in range(8)]
    try:
        time.sleep(0.5)
        # The four over the per-address limit were closed at once.
        stop = threading.Event()
        closed = [closed_by_peer(s, stop, 0.5) for s in silent]
        assert closed.count(True) == 4, closed
        # The others hold no association: another address still gets both.
        assert _echo(rx.port) == 0x0000
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)
        first = ae.associate("127.0.0.1", rx.port, ae_title="TRIAGE")
        second = ae.associate("127.0.0.1", rx.port, ae_title="TRIAGE")
        assert first.is_established and second.is_established
        third = ae.associate("127.0.0.1", rx.port, ae_title="TRIAGE")
        assert third.is_rejected  # max_associations still holds for associations
        first.release()
        second.release()
    finally:
        for sock in silent:
            sock.close()


def test_stop_returns_in_time_whatever_the_peers_do(start_receiver) -> None:
    rx = start_receiver(receiver={"network_timeout": 60.0, "acse_timeout": 60.0})
    swarms = [Swarm(kind, rx.port, count=4).start() for kind in ("drip_header", "drip_p_data")]
    try:
        time.sleep(2.0)
        start = time.monotonic()
        rx.receiver.stop(timeout=1.0)
        assert time.monotonic() - start < 4.0
        # No thread is left reading from a peer.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and _dul_threads(rx.port):
            time.sleep(0.05)
        assert not _dul_threads(rx.port)
    finally:
        for swarm in swarms:
            swarm.finish()


def _dul_threads(port: int) -> list[threading.Thread]:
    """The receiver's DUL reader threads still alive (non-daemon: they would block exit)."""
    out = []
    for thread in threading.enumerate():
        assoc = getattr(thread, "assoc", None)
        if assoc is not None and assoc.is_acceptor and thread.is_alive():
            out.append(thread)
    return out


def test_hostile_address_is_a_distinct_loopback_address() -> None:
    """The swarm tests rely on 127.0.0.2 reaching 127.0.0.1 as another peer address."""
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    with server, connect(server.getsockname()[1], HOSTILE_ADDRESS):
        conn, address = server.accept()
        conn.close()
    assert address[0] == HOSTILE_ADDRESS


def test_a_pacs_is_served_while_16_hostile_connections_of_each_kind_are_held(
    tmp_path: Path,
) -> None:
    """The issue's test: every kind of hostile peer at once, from another address, while
    dcmtk's storescu sends a series and echoscu verifies; then SIGTERM, in time."""
    daemon = Daemon(
        tmp_path,
        receiver={
            **TIMEOUTS,
            "shutdown_timeout": 2.0,
            # The allow-list is set, and the P-DATA drippers know an allowed AE title.
            "allowed_calling_aets": ["STORESCU", "ECHOSCU", "HOSTILE"],
            # 16 dripping associations are associations: leave room for the PACS's.
            "max_associations": 24,
        },
    ).start()
    swarms = [Swarm(kind, daemon.port).start() for kind in [*KINDS, "drip_p_data"]]
    try:
        time.sleep(3.0)  # every kind has connected, and the first have been cut
        _, _, files = write_series(tmp_path / "study", 12)
        sent = subprocess.run(
            [dcmtk("storescu"), "-aec", "TRIAGE", "127.0.0.1", str(daemon.port), *map(str, files)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        echo = subprocess.run(
            [dcmtk("echoscu"), "-aec", "TRIAGE", "127.0.0.1", str(daemon.port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert echo.returncode == 0, echo.stdout + echo.stderr
        assert len(list((tmp_path / "var" / "spool").rglob("*.dcm"))) == len(files)

        # A swarm records a lifetime when the receiver cuts one of its connections; on a
        # loaded CI machine the first cut of the slowest kind may come after the PACS's
        # series, so wait for one (bounded) before judging them.
        deadline = time.monotonic() + 10.0
        while any(not s.lifetimes for s in swarms) and time.monotonic() < deadline:
            time.sleep(0.2)
        for swarm in swarms:
            assert swarm.lifetimes, f"{swarm.kind}: the receiver closed none of them"
            # The 2-second timeouts bound every kind. A lifetime runs from the swarm's
            # connect, so it also holds the wait for accept() on two CPUs shared with ~80
            # hostile sockets and a storescu: a fresh-clone CI run measured 6.05 s. The
            # tests above check each deadline itself, one connection at a time.
            assert max(swarm.lifetimes) < 2.0 + 6.0, (swarm.kind, sorted(swarm.lifetimes)[-3:])

        # SIGTERM while they keep at it: done within shutdown_timeout and a few seconds.
        assert daemon.proc is not None
        start = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(2.0 + 5.0) == 0
        assert time.monotonic() - start < 2.0 + 5.0
    finally:
        for swarm in swarms:
            swarm.stop.set()
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
        for swarm in swarms:
            swarm.finish()
