"""Delivery state machine and DICOM C-STORE: sent, retried with backoff, dead, re-queued."""

from __future__ import annotations

import random
import socket
import ssl
import struct
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from dicom_factory import ct_slice
from dispatch_helpers import (
    MLLPListener,
    Received,
    delivery,
    dispatch_config,
    seed_result,
    start_store_scp,
)
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    KeyObjectSelectionDocumentStorage,
)
from sqlalchemy import select
from support import free_port, make_test_pki, open_db

from triage.cli import main
from triage.config import DispatchConfig
from triage.db import AuditEvent, Delivery, DeliveryState
from triage.db.models import utcnow
from triage.dispatch import (
    DeliveryContext,
    DeliveryError,
    Dispatcher,
    backoff_seconds,
    dispatch_due,
    retry_dead,
)


def pacs(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": "pacs",
        "type": "dicom",
        "ae_title": "PACS",
        "host": "127.0.0.1",
        "port": port,
        **extra,
    }


def test_positive_sends_sr_and_kos_proposing_only_their_contexts(tmp_path: Path) -> None:
    received = Received()
    scp = start_store_scp(0, received)
    try:
        config = dispatch_config(
            tmp_path, f"sqlite:///{tmp_path / 't.db'}", [pacs(scp.server_address[1])]
        )
        sessions = open_db(config)
        positive = seed_result(sessions, config, ["pacs"])
        negative = seed_result(sessions, config, ["pacs"], decision="absent")

        assert dispatch_due(sessions, config) == 2
    finally:
        scp.shutdown()

    assert sorted(received.stored) == sorted(
        [
            (Comprehensive3DSRStorage, positive.sr_sop_instance_uid),
            (KeyObjectSelectionDocumentStorage, positive.kos_sop_instance_uid),
            (Comprehensive3DSRStorage, negative.sr_sop_instance_uid),
        ]
    )
    assert {Comprehensive3DSRStorage, KeyObjectSelectionDocumentStorage} in received.proposed
    assert {Comprehensive3DSRStorage} in received.proposed  # the negative's association
    for seeded in (positive, negative):
        row = delivery(sessions, seeded.deliveries["pacs"])
        assert (row.state, row.attempts, row.last_error) == (DeliveryState.SENT, 1, None)
        assert row.sent_at is not None
    assert dispatch_due(sessions, config) == 0  # nothing is sent twice
    # The outbox files went out byte for byte, in their own transfer syntax.
    sr_file = config.data_dir / "outbox" / str(positive.result_id) / "sr.dcm"
    on_disk = sr_file.read_bytes()
    sr_sent = [data for _, data in received.encoded if on_disk.endswith(data)]
    assert len(sr_sent) == 1 and len(sr_sent[0]) > 1000
    assert {syntax for syntax, _ in received.encoded} == {ExplicitVRLittleEndian}


def test_a_pacs_that_takes_only_implicit_vr_gets_the_reports_converted(tmp_path: Path) -> None:
    received = Received()
    scp = start_store_scp(0, received, transfer_syntaxes=(ImplicitVRLittleEndian,))
    try:
        config = dispatch_config(
            tmp_path, f"sqlite:///{tmp_path / 't.db'}", [pacs(scp.server_address[1])]
        )
        sessions = open_db(config)
        positive = seed_result(sessions, config, ["pacs"])
        assert dispatch_due(sessions, config) == 1
    finally:
        scp.shutdown()
    assert sorted(received.stored) == sorted(
        [
            (Comprehensive3DSRStorage, positive.sr_sop_instance_uid),
            (KeyObjectSelectionDocumentStorage, positive.kos_sop_instance_uid),
        ]
    )
    assert {syntax for syntax, _ in received.encoded} == {ImplicitVRLittleEndian}
    assert delivery(sessions, positive.deliveries["pacs"]).state == DeliveryState.SENT


def test_pacs_down_retries_with_growing_backoff_then_dead_then_retry_resends_same_uids(
    tmp_path: Path, db_url: str
) -> None:
    port = free_port()
    config = dispatch_config(tmp_path, db_url, [pacs(port)], max_attempts=3)
    sessions = open_db(config)
    seeded = seed_result(sessions, config, ["pacs"])
    delivery_id = seeded.deliveries["pacs"]
    rng = random.Random(7)

    now = utcnow()
    waits = []
    for attempt in (1, 2):
        assert dispatch_due(sessions, config, now=now, rng=rng) == 1
        row = delivery(sessions, delivery_id)
        assert (row.state, row.attempts) == (DeliveryState.RETRYING, attempt)
        assert "cannot connect" in (row.last_error or "")
        waits.append((row.next_attempt_at - now).total_seconds())
        # Not due yet: nothing is attempted before next_attempt_at.
        assert dispatch_due(sessions, config, now=row.next_attempt_at - timedelta(seconds=1)) == 0
        now = row.next_attempt_at
    # backoff 10 s then 20 s, each with jitter 0.5-1.5.
    assert 5 <= waits[0] <= 15 and 10 <= waits[1] <= 30

    assert dispatch_due(sessions, config, now=now, rng=rng) == 1
    row = delivery(sessions, delivery_id)
    assert (row.state, row.attempts) == (DeliveryState.DEAD, 3)
    assert f"127.0.0.1:{port}" in (row.last_error or "")
    assert dispatch_due(sessions, config, now=now + timedelta(days=1)) == 0  # dead stays dead

    # A restart: a new engine, only the rows to go on.
    sessions = open_db(config)
    assert retry_dead(sessions) == 1
    row = delivery(sessions, delivery_id)
    assert (row.state, row.attempts) == (DeliveryState.PENDING, 0)

    received = Received()
    scp = start_store_scp(port, received)
    try:
        assert dispatch_due(sessions, config) == 1
    finally:
        scp.shutdown()
    assert sorted(uid for _, uid in received.stored) == sorted(
        [seeded.sr_sop_instance_uid, seeded.kos_sop_instance_uid]
    )
    row = delivery(sessions, delivery_id)
    assert (row.state, row.attempts, row.last_error) == (DeliveryState.SENT, 1, None)
    with sessions() as session:
        (event,) = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "deliveries_retried")
        ).all()
        assert event.detail["delivery_ids"] == [delivery_id]


def test_a_resend_after_success_carries_the_same_uids(tmp_path: Path) -> None:
    received = Received()
    scp = start_store_scp(0, received)
    try:
        config = dispatch_config(
            tmp_path, f"sqlite:///{tmp_path / 't.db'}", [pacs(scp.server_address[1])]
        )
        sessions = open_db(config)
        seeded = seed_result(sessions, config, ["pacs"], decision="absent")
        dispatch_due(sessions, config)
        with sessions.begin() as session:  # as if the PACS lost it and an admin resent it
            row = session.get(Delivery, seeded.deliveries["pacs"])
            assert row is not None
            row.state = DeliveryState.DEAD
        retry_dead(sessions)
        dispatch_due(sessions, config)
    finally:
        scp.shutdown()
    assert [uid for _, uid in received.stored] == [seeded.sr_sop_instance_uid] * 2


def test_backoff_doubles_up_to_the_maximum_with_jitter_never_past_it() -> None:
    cfg = DispatchConfig(backoff_seconds=10, max_backoff_seconds=100)
    for attempts, base in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (60, 100), (500, 100)]:
        samples = [backoff_seconds(attempts, cfg, random.Random(seed)) for seed in range(50)]
        # max_backoff_seconds caps the delay with its jitter (it once reached 1.5 times it).
        assert all(0.5 * base <= s <= min(1.5 * base, 100) for s in samples)
        assert max(samples) - min(samples) > 0.2 * base  # jittered, not all the same


def test_destination_missing_from_config_is_dead_at_once(tmp_path: Path) -> None:
    config = dispatch_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}", [])
    sessions = open_db(config)
    seeded = seed_result(sessions, config, ["old-pacs"])
    assert dispatch_due(sessions, config) == 1
    row = delivery(sessions, seeded.deliveries["old-pacs"])
    assert (row.state, row.attempts) == (DeliveryState.DEAD, 1)
    assert "'old-pacs' is not in the configuration" in (row.last_error or "")


def test_missing_outbox_file_is_retried(tmp_path: Path) -> None:
    config = dispatch_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}", [pacs(free_port())])
    sessions = open_db(config)
    seeded = seed_result(sessions, config, ["pacs"], write_files=False)
    dispatch_due(sessions, config)
    row = delivery(sessions, seeded.deliveries["pacs"])
    assert row.state == DeliveryState.RETRYING
    assert "sr.dcm does not exist" in (row.last_error or "")


def test_a_crashing_sender_is_retried_and_the_queue_goes_on(tmp_path: Path) -> None:
    config = dispatch_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}", [pacs(1)])
    sessions = open_db(config)
    first = seed_result(sessions, config, ["pacs"], decision="absent")
    second = seed_result(sessions, config, ["pacs"], decision="absent")
    sent: list[int] = []

    def flaky(_dest: Any, context: DeliveryContext) -> None:
        if context.delivery_id == first.deliveries["pacs"]:
            raise KeyError("boom")
        sent.append(context.delivery_id)

    assert dispatch_due(sessions, config, senders={"dicom": flaky}) == 2
    assert sent == [second.deliveries["pacs"]]
    row = delivery(sessions, first.deliveries["pacs"])
    assert row.state == DeliveryState.RETRYING
    # Named by class and place; the message ('boom') could quote a value.
    assert (row.last_error or "").startswith("unexpected KeyError in ")
    assert "boom" not in (row.last_error or "")


def test_permanent_error_goes_straight_to_dead(tmp_path: Path) -> None:
    config = dispatch_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}", [pacs(1)])
    sessions = open_db(config)
    seeded = seed_result(sessions, config, ["pacs"])

    def refuse(_dest: Any, _context: DeliveryContext) -> None:
        raise DeliveryError("refused for good", permanent=True)

    dispatch_due(sessions, config, senders={"dicom": refuse})
    row = delivery(sessions, seeded.deliveries["pacs"])
    assert (row.state, row.attempts, row.last_error) == (DeliveryState.DEAD, 1, "refused for good")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_dispatchers_on_postgresql_never_send_one_delivery_twice(
    tmp_path: Path, db_url: str
) -> None:
    config = dispatch_config(tmp_path, db_url, [pacs(1)])
    sessions = open_db(config)
    ids = [
        seed_result(sessions, config, ["pacs"], decision="absent").deliveries["pacs"]
        for _ in range(6)
    ]
    sent: list[int] = []
    lock = threading.Lock()

    def slow(_dest: Any, context: DeliveryContext) -> None:
        time.sleep(0.1)  # long enough for the other dispatcher to reach the same rows
        with lock:
            sent.append(context.delivery_id)

    daemons = [
        threading.Thread(
            target=dispatch_due, args=(open_db(config), config), kwargs={"senders": {"dicom": slow}}
        )
        for _ in range(2)
    ]
    for t in daemons:
        t.start()
    for t in daemons:
        t.join(30)
    assert sorted(sent) == sorted(ids)
    assert all(delivery(sessions, i).state == DeliveryState.SENT for i in ids)


def test_cli_retry_requeues_dead_deliveries_of_one_destination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = dispatch_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}", [])
    sessions = open_db(config)
    seeded = seed_result(sessions, config, ["pacs", "ris"])
    dispatch_due(sessions, config)  # neither is configured: both dead
    config_file = tmp_path / "triage.yaml"
    config_file.write_text(
        yaml.safe_dump({"data_dir": str(config.data_dir), "database": {"url": config.database_url}})
    )

    assert main(["retry", "--config", str(config_file), "--destination", "ris"]) == 0
    assert "re-queued 1 dead delivery to ris" in capsys.readouterr().out
    assert delivery(sessions, seeded.deliveries["ris"]).state == DeliveryState.PENDING
    assert delivery(sessions, seeded.deliveries["pacs"]).state == DeliveryState.DEAD

    assert main(["retry", "--config", str(config_file)]) == 0
    assert "re-queued 1 dead delivery" in capsys.readouterr().out
    assert delivery(sessions, seeded.deliveries["pacs"]).state == DeliveryState.PENDING
    assert main(["retry", "--config", str(config_file)]) == 0
    assert "re-queued 0 dead deliveries" in capsys.readouterr().out


def test_dicom_over_tls_verifies_the_pacs_against_the_ca(tmp_path: Path) -> None:
    d = make_test_pki(tmp_path / "pki", names=("pacs",))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(d / "pacs.pem", d / "pacs.key")
    received = Received()
    scp = start_store_scp(0, received, ssl_context=server_tls)
    try:
        port = scp.server_address[1]
        destinations = [
            pacs(port, tls=True, ca_certificate=str(d / "ca.pem")),
            pacs(port, name="untrusted", tls=True),  # the system CAs do not know ours
        ]
        config = dispatch_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}", destinations)
        sessions = open_db(config)
        seeded = seed_result(sessions, config, ["pacs", "untrusted"], decision="absent")
        assert dispatch_due(sessions, config) == 2
    finally:
        scp.shutdown()
    assert received.stored == [(Comprehensive3DSRStorage, seeded.sr_sop_instance_uid)]
    assert delivery(sessions, seeded.deliveries["pacs"]).state == DeliveryState.SENT
    assert delivery(sessions, seeded.deliveries["untrusted"]).state == DeliveryState.RETRYING


class FrozenPeer:
    """A PACS that is frozen: its port accepts connections and never reads or answers
    (as a SIGSTOPped Orthanc does). Closing it resets the connections it holds."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self.listener.close()
        while self.connections:
            conn = self.connections.pop()
            # SO_LINGER 0: close with a reset, so the sender's read fails at once.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()


def _wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_frozen_pacs_does_not_hold_back_the_ris_flag(tmp_path: Path) -> None:
    frozen = FrozenPeer()
    ris = MLLPListener()
    try:
        destinations = [
            pacs(frozen.port),
            {"name": "ris", "type": "hl7", "host": "127.0.0.1", "port": ris.port},
        ]
        config = dispatch_config(
            tmp_path, f"sqlite:///{tmp_path / 't.db'}", destinations, max_concurrent_sends=2
        )
        sessions = open_db(config)
        dispatcher = Dispatcher(sessions, config)
        try:
            earlier = [seed_result(sessions, config, ["pacs"]) for _ in range(3)]
            first = seed_result(sessions, config, ["pacs", "ris"])
            dispatcher.sweep()
            # The ORU goes while the PACS holds its sends (a 30 s ACSE timeout each).
            assert _wait_until(lambda: len(ris.messages) == 1)
            assert delivery(sessions, first.deliveries["ris"]).state == DeliveryState.SENT
            # At most max_concurrent_sends associations to the PACS; the rest wait their turn.
            assert _wait_until(lambda: len(frozen.connections) == 2)
            time.sleep(0.5)
            assert len(frozen.connections) == 2
            for seeded in [*earlier, first]:
                row = delivery(sessions, seeded.deliveries["pacs"])
                assert (row.state, row.attempts) == (DeliveryState.PENDING, 0)

            # A result that comes while the PACS still hangs (the daemon sweeps again
            # when a worker stores one) is flagged at once too.
            second = seed_result(sessions, config, ["pacs", "ris"])
            dispatcher.sweep()
            assert _wait_until(lambda: len(ris.messages) == 2)
            assert delivery(sessions, second.deliveries["ris"]).state == DeliveryState.SENT
            assert len(frozen.connections) == 2
        finally:
            frozen.close()  # the held sends fail now, not after their timeouts
            dispatcher.close()
    finally:
        ris.close()
        frozen.close()
    # The PACS deliveries that were attempted wait for a retry; none was lost.
    states = {delivery(sessions, s.deliveries["pacs"]).state for s in [*earlier, first, second]}
    assert states <= {DeliveryState.RETRYING, DeliveryState.PENDING}


def test_the_chunked_send_switch_is_set_once_and_triage_send_still_sends_every_syntax(
    tmp_path: Path, start_receiver: Any
) -> None:
    # Importing the DICOM senders sets pynetdicom's process-wide switch once; `triage
    # send` in the same process then streams files too, and must still deliver each
    # file in its own transfer syntax.
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import _config as pynetdicom_config

    import triage.dispatch._dimse  # noqa: F401
    from triage.send import send_files

    assert pynetdicom_config.STORE_SEND_CHUNKED_DATASET is True
    running = start_receiver()
    sent = []
    for index, syntax in enumerate((ExplicitVRLittleEndian, ImplicitVRLittleEndian)):
        ds = ct_slice("1.2.826.0.1.7", "1.2.826.0.1.7.1", index)
        ds.file_meta.TransferSyntaxUID = syntax
        path = tmp_path / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sent.append(ds)
    result = send_files([tmp_path / "0.dcm", tmp_path / "1.dcm"], "127.0.0.1", running.port)
    assert (result.sent, result.failures) == (2, [])
    for ds in sent:
        stored = dcmread(
            running.spool / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        )
        assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert stored.PixelData == ds.PixelData
