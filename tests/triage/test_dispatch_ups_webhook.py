"""UPS Push N-CREATE with priority HIGH, and the webhook's JSON without patient identity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dicom_factory import ACCESSION, PATIENT_ID, PATIENT_NAME
from dispatch_helpers import (
    PROBABILITY,
    Received,
    WebhookServer,
    delivery,
    dispatch_config,
    seed_result,
    start_ups_scp,
)
from pydicom.uid import Comprehensive3DSRStorage, KeyObjectSelectionDocumentStorage
from support import open_db

from triage.db import Delivery, DeliveryState
from triage.dispatch import dispatch_due, retry_dead


def worklist(port: int) -> dict[str, Any]:
    return {
        "name": "worklist",
        "type": "ups",
        "ae_title": "WORKLIST",
        "host": "127.0.0.1",
        "port": port,
    }


def test_ups_push_creates_a_high_priority_workitem_once_per_delivery(tmp_path: Path) -> None:
    received = Received()
    scp = start_ups_scp(received)
    try:
        config = dispatch_config(
            tmp_path, f"sqlite:///{tmp_path / 't.db'}", [worklist(scp.server_address[1])]
        )
        sessions = open_db(config)
        seeded = seed_result(sessions, config, ["worklist"])
        assert dispatch_due(sessions, config) == 1
        # Resent (an admin re-queues it): the same workitem UID, so no second workitem.
        with sessions.begin() as session:
            row = session.get(Delivery, seeded.deliveries["worklist"])
            assert row is not None
            row.state = DeliveryState.DEAD
        retry_dead(sessions)
        assert dispatch_due(sessions, config) == 1
    finally:
        scp.shutdown()

    (uid, workitem), (again, _) = received.created
    assert uid == again
    assert workitem.ScheduledProcedureStepPriority == "HIGH"
    assert workitem.ProcedureStepState == "SCHEDULED"
    assert workitem.InputReadinessState == "READY"
    assert workitem.ScheduledWorkitemCodeSequence[0].CodeValue == "110005"
    assert workitem.StudyInstanceUID == seeded.study_instance_uid
    assert workitem.ReferencedRequestSequence[0].AccessionNumber == ACCESSION
    inputs = {
        (
            i.ReferencedSOPSequence[0].ReferencedSOPClassUID,
            i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID,
        )
        for i in workitem.InputInformationSequence
    }
    assert inputs == {
        (Comprehensive3DSRStorage, seeded.sr_sop_instance_uid),
        (KeyObjectSelectionDocumentStorage, seeded.kos_sop_instance_uid),
    }
    assert delivery(sessions, seeded.deliveries["worklist"]).state == DeliveryState.SENT


def _dispatch_to_ups_answering(status: int, tmp_path: Path) -> Delivery:
    """Send one result to a UPS SCP that answers N-CREATE with ``status``; the row after."""
    scp = start_ups_scp(Received(), status=status)
    try:
        config = dispatch_config(
            tmp_path, f"sqlite:///{tmp_path / 't.db'}", [worklist(scp.server_address[1])]
        )
        sessions = open_db(config)
        seeded = seed_result(sessions, config, ["worklist"])
        dispatch_due(sessions, config)
    finally:
        scp.shutdown()
    return delivery(sessions, seeded.deliveries["worklist"])


def test_ups_duplicate_answer_means_the_workitem_is_there(tmp_path: Path) -> None:
    assert _dispatch_to_ups_answering(0x0111, tmp_path).state == DeliveryState.SENT


def test_ups_refusal_is_retried_with_its_status(tmp_path: Path) -> None:
    row = _dispatch_to_ups_answering(0x0110, tmp_path)
    assert row.state == DeliveryState.RETRYING
    assert "0x0110" in (row.last_error or "")


def test_webhook_posts_the_finding_without_patient_identity(tmp_path: Path) -> None:
    server = WebhookServer()
    try:
        hook = {"name": "chat", "type": "webhook", "url": server.url, "token": "s3cret"}
        config = dispatch_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}", [hook])
        sessions = open_db(config)
        seeded = seed_result(sessions, config, ["chat"])
        assert dispatch_due(sessions, config) == 1
    finally:
        server.close()
    ((headers, body),) = server.requests
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert payload["study_instance_uid"] == seeded.study_instance_uid
    assert payload["series_instance_uid"] == seeded.series_instance_uid
    assert payload["sr_sop_instance_uid"] == seeded.sr_sop_instance_uid
    assert (payload["decision"], payload["probability"]) == ("present", PROBABILITY)
    assert payload["flagged_slice_count"] == 3
    text = body.decode()
    for identity in (PATIENT_ID, ACCESSION, PATIENT_NAME, *PATIENT_NAME.split("^")):
        assert identity not in text
    assert not {"patient_id", "patient_name", "accession_number"} & set(payload)
    assert delivery(sessions, seeded.deliveries["chat"]).state == DeliveryState.SENT


def test_webhook_server_error_is_retried_and_client_error_is_dead(tmp_path: Path) -> None:
    server = WebhookServer(status=503)
    try:
        hooks = [
            {"name": "chat", "type": "webhook", "url": server.url},
        ]
        config = dispatch_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}", hooks)
        sessions = open_db(config)
        busy = seed_result(sessions, config, ["chat"])
        dispatch_due(sessions, config)
        server.status = 404
        wrong = seed_result(sessions, config, ["chat"])
        dispatch_due(sessions, config)
    finally:
        server.close()
    row = delivery(sessions, busy.deliveries["chat"])
    assert row.state == DeliveryState.RETRYING and "HTTP 503" in (row.last_error or "")
    row = delivery(sessions, wrong.deliveries["chat"])
    assert row.state == DeliveryState.DEAD and "HTTP 404" in (row.last_error or "")


def test_a_non_conformant_accession_number_is_left_empty_in_the_workitem(
    tmp_path: Path,
) -> None:
    received = Received()
    scp = start_ups_scp(received)
    try:
        config = dispatch_config(
            tmp_path, f"sqlite:///{tmp_path / 't.db'}", [worklist(scp.server_address[1])]
        )
        sessions = open_db(config)
        two_values = seed_result(sessions, config, ["worklist"], accession="AB\\CD|EF")
        too_long = seed_result(sessions, config, ["worklist"], accession="ACC1234567890123456")
        assert dispatch_due(sessions, config) == 2
    finally:
        scp.shutdown()
    for _, workitem in received.created:
        # Type 2: empty when it cannot be sent as it is, never cut or split.
        assert workitem.ReferencedRequestSequence[0].AccessionNumber == ""
        assert workitem.PatientID == PATIENT_ID
    for seeded in (two_values, too_long):
        assert delivery(sessions, seeded.deliveries["worklist"]).state == DeliveryState.SENT
