"""HL7 ORU^R01 over MLLP: one message per positive, keyed on the accession, ACKs obeyed."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicom_factory import ACCESSION, BIRTH_DATE, PATIENT_ID, PATIENT_NAME
from dispatch_helpers import MLLPListener, delivery, dispatch_config, seed_result, segments
from support import open_db

from triage.db import DeliveryState
from triage.dispatch import dispatch_due
from triage.dispatch.hl7 import escape, person_name
from triage.dispatch.mllp import parse_ack


def ris(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": "ris",
        "type": "hl7",
        "host": "127.0.0.1",
        "port": port,
        "ack_timeout_seconds": 5,
        **extra,
    }


@pytest.fixture
def listener() -> Iterator[MLLPListener]:
    server = MLLPListener()
    yield server
    server.close()


def test_one_oru_per_positive_keyed_on_the_accession_with_status_p_and_flag_a(
    tmp_path: Path, listener: MLLPListener, db_url: str
) -> None:
    config = dispatch_config(
        tmp_path, db_url, [ris(listener.port, receiving_application="PowerScribe")]
    )
    sessions = open_db(config)
    seeded = seed_result(sessions, config, ["ris"])

    assert dispatch_due(sessions, config) == 1
    assert dispatch_due(sessions, config) == 0

    (message,) = listener.messages
    seg = segments(message)
    msh = seg["MSH"][0]
    assert msh[9] == "ORU^R01^ORU_R01"
    assert msh[12] == "2.5.1"
    assert (msh[3], msh[5]) == ("CTPA_TRIAGE", "PowerScribe")
    assert msh[10] == f"T{seeded.deliveries['ris']}-1"
    pid = seg["PID"][0]
    assert pid[3] == PATIENT_ID  # the RIS matches the patient with it
    # Name and birth date, which RIS interfaces check against the order, from the SR.
    assert (pid[5], pid[7]) == (PATIENT_NAME, BIRTH_DATE)
    orc, obr = seg["ORC"][0], seg["OBR"][0]
    assert orc[1] == "RE"
    assert orc[2] == orc[3] == obr[2] == obr[3] == obr[18] == ACCESSION
    assert obr[25] == "P"
    # The order's own priority is untouched: no ORC-7, OBR-5, OBR-27 and no TQ1.
    assert all(len(s) <= n or not s[n] for s, n in [(orc, 7), (obr, 5), (obr, 27)])
    assert "TQ1" not in seg
    finding, certainty, note = seg["OBX"]
    assert finding[2:6] == ["CWE", "59282003^Pulmonary embolism^SCT", "1", "52101004^Present^SCT"]
    assert (finding[8], finding[9], finding[11]) == ("A", "0.8764", "P")
    assert (certainty[2], certainty[5], certainty[6]) == ("NM", "87.6", "%^percent^UCUM")
    assert certainty[8] == "A"
    assert "not for diagnostic use" in note[5]
    row = delivery(sessions, seeded.deliveries["ris"])
    assert (row.state, row.attempts) == (DeliveryState.SENT, 1)


def test_negatives_get_no_oru(tmp_path: Path, listener: MLLPListener) -> None:
    # The worker creates no HL7 delivery for a negative; if one appears anyway, the RIS
    # still hears nothing.
    config = dispatch_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}", [ris(listener.port)])
    sessions = open_db(config)
    seeded = seed_result(sessions, config, ["ris"], decision="absent")
    dispatch_due(sessions, config)
    assert listener.messages == []
    assert delivery(sessions, seeded.deliveries["ris"]).state == DeliveryState.DEAD


def test_ae_is_retried_with_its_reason(tmp_path: Path, listener: MLLPListener) -> None:
    listener.code, listener.text = "AE", "Database busy"
    config = dispatch_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}", [ris(listener.port)])
    sessions = open_db(config)
    seeded = seed_result(sessions, config, ["ris"])
    dispatch_due(sessions, config)
    row = delivery(sessions, seeded.deliveries["ris"])
    assert row.state == DeliveryState.RETRYING
    assert "AE: Database busy" in (row.last_error or "")


def test_ar_is_dead_with_the_reason_and_no_identifiers(
    tmp_path: Path, listener: MLLPListener
) -> None:
    family, given = PATIENT_NAME.split("^")[:2]
    listener.code, listener.text = (
        "AR",
        f"Unknown order {ACCESSION} for {family}, {BIRTH_DATE}; {given.lower()} id {PATIENT_ID}",
    )
    config = dispatch_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}", [ris(listener.port)])
    sessions = open_db(config)
    seeded = seed_result(sessions, config, ["ris"])
    dispatch_due(sessions, config)
    row = delivery(sessions, seeded.deliveries["ris"])
    assert (row.state, row.attempts) == (DeliveryState.DEAD, 1)
    assert row.last_error is not None
    assert (
        "AR: Unknown order <accession> for <patient name>, <birth date>; <patient name> id "
        "<patient id>" in row.last_error
    )
    for value in (ACCESSION, family, given, PATIENT_ID):
        assert value.lower() not in row.last_error.lower()


def test_a_study_without_accession_cannot_be_matched_and_is_dead(
    tmp_path: Path, listener: MLLPListener
) -> None:
    config = dispatch_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}", [ris(listener.port)])
    sessions = open_db(config)
    seeded = seed_result(sessions, config, ["ris"], accession=None)
    dispatch_due(sessions, config)
    assert listener.messages == []
    row = delivery(sessions, seeded.deliveries["ris"])
    assert row.state == DeliveryState.DEAD
    assert "no Accession Number" in (row.last_error or "")


def test_a_silent_listener_times_out_and_is_retried(tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        config = dispatch_config(
            tmp_path,
            f"sqlite:///{tmp_path / 't.db'}",
            [ris(silent.getsockname()[1], ack_timeout_seconds=0.3)],
        )
        sessions = open_db(config)
        seeded = seed_result(sessions, config, ["ris"])
        dispatch_due(sessions, config)
    row = delivery(sessions, seeded.deliveries["ris"])
    assert row.state == DeliveryState.RETRYING
    assert "no ACK" in (row.last_error or "")


def test_escape_keeps_delimiters_out_of_fields() -> None:
    assert escape("a|b^c&d~e\\f\rg") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f g"


def test_a_dicom_person_name_becomes_an_xpn() -> None:
    # DICOM: family^given^middle^prefix^suffix; HL7 XPN: family^given^middle^suffix^prefix.
    assert person_name("Doe^John^Quincy^Dr^Jr") == "Doe^John^Quincy^Jr^Dr"
    assert person_name("Doe^John") == "Doe^John"
    assert person_name("Yamada^Tarou=山田^太郎=やまだ^たろう") == "Yamada^Tarou"
    assert person_name("O|Brien^Ann") == "O\\F\\Brien^Ann"
    assert person_name("") == ""


def test_parse_ack_reads_err_when_msa_has_no_text() -> None:
    ack = parse_ack(
        b"MSH|^~\\&|RIS|H|T|H|20260101||ACK|1|P|2.5.1\rMSA|AR|T9-1\r"
        b"ERR||OBR^1^3|103^Table value not found^HL70357|E||||Order not on file\r"
    )
    assert (ack.code, ack.control_id, ack.text) == ("AR", "T9-1", "Order not on file")
    assert ack.rejected and not ack.accepted
