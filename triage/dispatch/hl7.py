"""HL7 v2.5.1 ORU^R01 to a RIS or worklist engine, over MLLP, for positives.

The message tells the RIS that the AI suspects pulmonary embolism in one ordered exam,
keyed on its Accession Number, as a preliminary result (status P) with abnormal flag A.
It never sets a priority: the order's own priority (ORC-7, TQ1, OBR-5, OBR-27) is the
RIS's and is left untouched; the RIS or worklist decides what a flag does.

Layout (``|`` fields, ``^`` components, segments ended by a carriage return)::

    MSH|^~\\&|<sending app>|<sending facility>|<receiving app>|<receiving facility>|
        <now>||ORU^R01^ORU_R01|T<delivery id>-<attempt>|P|2.5.1||||||UNICODE UTF-8
    PID|1||<Patient ID>||<Patient Name as XPN>||<birth date>|<sex>
    ORC|RE|<accession>|<accession>
    OBR|1|<accession>|<accession>|PE_TRIAGE^CTPA pulmonary embolism AI triage^L|||
        <result time>|...|OBR-18 <accession>|...|OBR-22 <now>||OBR-24 CT|OBR-25 P
    OBX|1|CWE|59282003^Pulmonary embolism^SCT|1|52101004^Present^SCT|||A|<0-1>||P|||<t>
    OBX|2|NM|111012^Certainty of finding^DCM|1|<percent>|%^percent^UCUM||A|||P|||<t>
    OBX|3|ST|121106^Comment^DCM|1|<algorithm, flagged slices, not for diagnostic use>|||||
        |P|||<t>

The accession is in ORC-2/ORC-3 and OBR-2/OBR-3 (placer and filler order number, as
most interface engines key results) and in OBR-18 (where IHE Scheduled Workflow puts
it). OBX-9 carries the probability as HL7 defines it (0 to 1); OBX 2 repeats it in
percent for a RIS that only displays values. The message control ID is
``T<delivery id>-<attempt>``: every attempt can be traced in the RIS's logs to one
delivery and one attempt, and a resend of the same result is a plain update.

PID-3 comes from the database; the name, birth date and sex (PID-5, 7 and 8, which
RIS interfaces check against the order) come from the SR in the outbox (or the KOS,
when no SR could be built), which copied them from the analysed images, made
conformant or left empty. The database keeps no more patient data for the sake of
this message, and none of it reaches a log line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from triage.config import HL7Destination
from triage.db.models import utcnow
from triage.dispatch.context import DeliveryContext, DeliveryError
from triage.dispatch.mllp import exchange, parse_ack

SERVICE = ("PE_TRIAGE", "CTPA pulmonary embolism AI triage", "L")
FINDING = ("59282003", "Pulmonary embolism", "SCT")
PRESENT = ("52101004", "Present", "SCT")
CERTAINTY = ("111012", "Certainty of finding", "DCM")
COMMENT = ("121106", "Comment", "DCM")
PERCENT = ("%", "percent", "UCUM")

_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}


def escape(text: str) -> str:
    """Escape HL7's delimiters in ``text``; line breaks, which end segments, become spaces."""
    text = " ".join(text.splitlines())
    return "".join(_ESCAPES.get(char, char) for char in text)


def _coded(code: tuple[str, str, str]) -> str:
    return "^".join(escape(part) for part in code)


def _timestamp(moment: datetime) -> str:
    # Naive datetimes in the database are UTC; HL7 wants the offset said.
    return moment.strftime("%Y%m%d%H%M%S") + "+0000"


def _segment(name: str, fields: dict[int, str]) -> str:
    """A segment from its non-empty fields, by HL7 field number."""
    values = [""] * (max(fields) if fields else 0)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join([name, *values])


@dataclass(frozen=True)
class Patient:
    """PID-5, PID-7 and PID-8, already in HL7 form (empty when the images had none)."""

    name: str = ""
    birth_date: str = ""
    sex: str = ""

    def __repr__(self) -> str:  # never print a patient's identity by accident
        return "Patient(<redacted>)"


def person_name(dicom_name: str) -> str:
    """A DICOM PN (family^given^middle^prefix^suffix) as an HL7 XPN (family^given^
    middle^suffix^prefix), from its alphabetic group, escaped."""
    parts = (dicom_name.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    return "^".join(escape(p) for p in (family, given, middle, suffix, prefix)).rstrip("^")


def patient_from_sr(context: DeliveryContext) -> Patient:
    """The patient as the SR (or, without one, the KOS) carries it; empty fields if
    neither can be read. The flag goes either way: it is keyed on the accession."""
    for path in (context.sr_path, context.kos_path):
        if path is None:
            continue
        try:
            ds = dcmread(path, specific_tags=["PatientName", "PatientBirthDate", "PatientSex"])
        except (OSError, InvalidDicomError, ValueError):
            continue
        return _patient(ds)
    return Patient()


def _patient(ds: Dataset) -> Patient:
    sex = str(ds.get("PatientSex", "") or "").upper()
    return Patient(
        name=person_name(str(ds.get("PatientName", "") or "")),
        birth_date=escape(str(ds.get("PatientBirthDate", "") or "")),
        # DICOM's M, F and O are HL7 table 0001's too; anything else is unknown.
        sex=sex if sex in ("M", "F", "O") else ("U" if sex else ""),
    )


def control_id(context: DeliveryContext) -> str:
    """MSH-10: one per attempt, at most 20 characters, traceable to the delivery."""
    return f"T{context.delivery_id}-{context.attempt}"


def build_oru(
    destination: HL7Destination,
    context: DeliveryContext,
    now: datetime | None = None,
    patient: Patient | None = None,
) -> str:
    """The ORU^R01 for one positive result, segments separated by carriage returns.

    Raises
    ------
    DeliveryError
        Permanent, if the result is not positive or the study has no Accession Number.
    """
    if not context.is_positive:
        raise DeliveryError(
            f"only PE-positive results go to HL7 destinations; this one is {context.decision}",
            permanent=True,
        )
    if not context.accession_number:
        raise DeliveryError(
            "the study has no Accession Number, so the RIS cannot match the result to an order",
            permanent=True,
        )
    now = now or utcnow()
    patient = patient or Patient()
    accession = escape(context.accession_number)
    observed = _timestamp(context.created_at)
    msh = (
        "MSH|^~\\&|"
        + "|".join(
            escape(v)
            for v in (
                destination.sending_application,
                destination.sending_facility,
                destination.receiving_application,
                destination.receiving_facility,
            )
        )
        + f"|{_timestamp(now)}||ORU^R01^ORU_R01|{control_id(context)}|P|2.5.1||||||UNICODE UTF-8"
    )
    segments = [
        msh,
        _segment(
            "PID",
            {
                1: "1",
                3: escape(context.patient_id or ""),
                5: patient.name,
                7: patient.birth_date,
                8: patient.sex,
            },
        ),
        _segment("ORC", {1: "RE", 2: accession, 3: accession}),
        _segment(
            "OBR",
            {
                1: "1",
                2: accession,
                3: accession,
                4: _coded(SERVICE),
                7: observed,
                18: accession,
                22: _timestamp(now),
                24: "CT",
                25: "P",
            },
        ),
    ]
    probability = context.stack_probability
    finding: dict[int, str] = {
        1: "1",
        2: "CWE",
        3: _coded(FINDING),
        4: "1",
        5: _coded(PRESENT),
        8: "A",
        11: "P",
        14: observed,
    }
    if probability is not None:
        finding[9] = f"{probability:.4f}"
    segments.append(_segment("OBX", finding))
    set_id = 2
    if probability is not None:
        segments.append(
            _segment(
                "OBX",
                {
                    1: str(set_id),
                    2: "NM",
                    3: _coded(CERTAINTY),
                    4: "1",
                    5: f"{probability * 100:.1f}",
                    6: _coded(PERCENT),
                    8: "A",
                    11: "P",
                    14: observed,
                },
            )
        )
        set_id += 1
    algorithm = " ".join(v for v in (context.bundle_name, context.bundle_version) if v)
    note = (
        f"Pulmonary embolism suspected by AI triage ({algorithm or 'unnamed model'}); "
        f"{context.flagged_slice_count} flagged slices in the key images. Preliminary, "
        "unverified, not for diagnostic use."
    )
    segments.append(
        _segment(
            "OBX",
            {
                1: str(set_id),
                2: "ST",
                3: _coded(COMMENT),
                4: "1",
                5: escape(note),
                11: "P",
                14: observed,
            },
        )
    )
    return "\r".join(segments) + "\r"


def _redact(text: str, context: DeliveryContext, patient: Patient) -> str:
    """``text`` without any identifier the message carried.

    A RIS may quote the order or patient it could not match; the reason goes to
    last_error, the log and ``triage status``, which never hold either. Every form that
    was sent is replaced, case-insensitively and longest first: the accession number and
    patient ID raw and HL7-escaped, the birth date, the whole name and each of its
    components and words (a RIS may quote only the given name).
    """
    labels: dict[str, str] = {}
    for value, label in (
        (context.accession_number, "<accession>"),
        (context.patient_id, "<patient id>"),
    ):
        if value:
            labels[value] = labels[escape(value)] = label
    if patient.birth_date:
        labels[patient.birth_date] = "<birth date>"
    for part in [patient.name, *re.split(r"[\^&\s]+", patient.name)]:
        if part:
            labels[part] = "<patient name>"
    for value in sorted(labels, key=len, reverse=True):
        if len(value) > 1:
            text = re.sub(re.escape(value), labels[value], text, flags=re.IGNORECASE)
    return text


def send_hl7(destination: HL7Destination, context: DeliveryContext) -> None:
    """Send the ORU^R01 over MLLP and read the ACK.

    Raises
    ------
    DeliveryError
        Transient for a connection failure, a late or malformed ACK, or AE; permanent
        for AR (the reason text from MSA-3/ERR is in the message).
    """
    patient = patient_from_sr(context)
    message = build_oru(destination, context, patient=patient)
    peer = f"{destination.host}:{destination.port}"
    try:
        reply = exchange(
            destination.host,
            destination.port,
            message.encode("utf-8"),
            destination.ack_timeout_seconds,
        )
    except OSError as err:
        raise DeliveryError(f"HL7 to {peer} failed: {err}") from err
    try:
        ack = parse_ack(reply)
    except ValueError as err:
        raise DeliveryError(f"{peer} answered with an unreadable ACK: {err}") from err
    if ack.control_id != control_id(context):
        raise DeliveryError(
            f"{peer} acknowledged message {ack.control_id!r}, not {control_id(context)!r}"
        )
    if ack.accepted:
        return
    reason = _redact(ack.text, context, patient) or "no reason given"
    raise DeliveryError(f"{peer} answered {ack.code}: {reason}", permanent=ack.rejected)
