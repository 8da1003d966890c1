"""UPS Push: N-CREATE a Unified Procedure Step with priority HIGH, for positives.

The workitem asks for a radiologist's interpretation (110005, DCM) of the study, with
the SR and KOS as its input, in the state SCHEDULED (PS3.4 CC.2.5). Its SOP Instance
UID is derived from the SR's and the destination's name, so a retry creates the same
workitem, and a peer that answers "duplicate SOP instance" to a retry already has it.
"""

from __future__ import annotations

from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import UnifiedProcedureStepPush  # type: ignore[attr-defined]

from triage.config import UPSDestination
from triage.db.models import utcnow
from triage.dispatch._dimse import associate, is_success_or_warning, read_file, status_code
from triage.dispatch.context import DeliveryContext, DeliveryError
from triage.logs import get_logger
from triage.report.conform import conformant_text
from triage.report.source import log_repairs
from triage.report.uids import derive_uid

log = get_logger(__name__)

WORKLIST_LABEL = "CTPA PE TRIAGE"
INTERPRETATION = ("110005", "DCM", "Interpretation")
_DUPLICATE_SOP_INSTANCE = 0x0111
# PS3.7 C.4.2 statuses that say the request itself is wrong: a retry would be too.
_PERMANENT = {0x0105, 0x0106, 0x0116, 0x0117, 0x0120, 0x0121, 0x0122, 0x0124}


def workitem_uid(context: DeliveryContext, uid_prefix: str = PYDICOM_ROOT_UID) -> str:
    """The workitem's SOP Instance UID: the same for every attempt of one delivery."""
    anchor = context.sr_sop_instance_uid or f"result-{context.result_id}"
    return derive_uid(uid_prefix, anchor, "ups", context.destination)


def _dt(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S") + "+0000"


def _code(value: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value
    return item


def _input(study_uid: str, series_uid: str, sop_class: str, sop_instance: str) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = sop_class
    reference.ReferencedSOPInstanceUID = sop_instance
    item = Dataset()
    item.TypeOfInstances = "DICOM"
    item.StudyInstanceUID = study_uid
    item.SeriesInstanceUID = series_uid
    item.ReferencedSOPSequence = [reference]
    return item


def _conformant(keyword: str, value: str | None) -> str:
    text, repair = conformant_text(keyword, value)
    if repair is not None:
        log_repairs([repair], log)
    return text


def build_workitem(
    context: DeliveryContext, inputs: list[Dataset], now: datetime | None = None
) -> Dataset:
    """The N-CREATE attribute list of the workitem (PS3.4 Table CC.2.5-3).

    Parameters
    ----------
    context : DeliveryContext
        The delivery; its Patient ID and Accession Number let the worklist match the
        patient and the order.
    inputs : list of Dataset
        The SR and KOS as read from the outbox.
    now : datetime, optional
        Naive UTC; the current time by default.
    """
    now = now or utcnow()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    # Empty at creation: a performer sets it when it claims the workitem.
    ds.TransactionUID = ""
    ds.ScheduledProcedureStepPriority = "HIGH"
    ds.ProcedureStepState = "SCHEDULED"
    ds.InputReadinessState = "READY"
    ds.ProcedureStepLabel = "Read CTPA: pulmonary embolism suspected by AI"
    ds.WorklistLabel = WORKLIST_LABEL
    ds.ScheduledProcedureStepStartDateTime = _dt(now)
    ds.ScheduledProcedureStepModificationDateTime = _dt(now)
    ds.ScheduledWorkitemCodeSequence = [_code(INTERPRETATION)]
    ds.ScheduledStationNameCodeSequence = []
    ds.ScheduledStationClassCodeSequence = []
    ds.ScheduledStationGeographicLocationCodeSequence = []
    ds.ScheduledHumanPerformersSequence = []
    ds.ScheduledProcessingParametersSequence = []
    ds.CommentsOnTheScheduledProcedureStep = (
        "AI triage, preliminary and unverified; not for diagnostic use"
    )
    ds.InputInformationSequence = [
        _input(
            str(i.StudyInstanceUID),
            str(i.SeriesInstanceUID),
            str(i.SOPClassUID),
            str(i.SOPInstanceUID),
        )
        for i in inputs
    ]
    ds.StudyInstanceUID = context.study_instance_uid
    ds.PatientName = ""
    # The database keeps the values as sent; the workitem gets them only if they are
    # conformant (an over-long or multi-valued accession number is left empty).
    ds.PatientID = _conformant("PatientID", context.patient_id)
    ds.IssuerOfPatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.AdmissionID = ""
    ds.IssuerOfAdmissionIDSequence = []
    ds.AdmittingDiagnosesDescription = ""
    request = Dataset()
    request.StudyInstanceUID = context.study_instance_uid
    request.AccessionNumber = _conformant("AccessionNumber", context.accession_number)
    request.IssuerOfAccessionNumberSequence = []
    request.PlacerOrderNumberImagingServiceRequest = ""
    request.FillerOrderNumberImagingServiceRequest = ""
    request.RequestedProcedureID = ""
    request.RequestedProcedureDescription = ""
    request.RequestedProcedureCodeSequence = []
    ds.ReferencedRequestSequence = [request]
    ds.ReplacedProcedureStepSequence = []
    ds.UnifiedProcedureStepPerformedProcedureSequence = []
    return ds


def send_ups(destination: UPSDestination, context: DeliveryContext) -> None:
    """N-CREATE the workitem on ``destination``.

    Raises
    ------
    DeliveryError
        Unless the peer answered success, a warning, or "duplicate SOP instance"
        (an earlier attempt created it and its answer was lost).
    """
    if not context.is_positive:
        raise DeliveryError(
            f"only PE-positive results go to UPS destinations; this one is {context.decision}",
            permanent=True,
        )
    # The SR may be missing (a header defeated its builder); the workitem still goes.
    inputs = [read_file(context.sr_path, "SR")] if context.sr_sop_instance_uid else []
    if context.kos_path is not None:
        inputs.append(read_file(context.kos_path, "KOS"))
    workitem = build_workitem(context, inputs)
    assoc = associate(
        calling_ae_title=destination.calling_ae_title,
        ae_title=destination.ae_title,
        host=destination.host,
        port=destination.port,
        contexts=[
            build_context(
                UnifiedProcedureStepPush, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            )
        ],
    )
    peer = f"{destination.ae_title}@{destination.host}:{destination.port}"
    try:
        if not assoc.accepted_contexts:
            raise DeliveryError(f"{peer} does not accept UPS Push", permanent=True)
        status, _ = assoc.send_n_create(workitem, UnifiedProcedureStepPush, workitem_uid(context))
        code = status_code(status)
        if code is None:
            raise DeliveryError(f"no N-CREATE response from {peer}")
        if is_success_or_warning(code) or code == _DUPLICATE_SOP_INSTANCE:
            return
        comment = str(status.get("ErrorComment", "")) if status is not None else ""
        raise DeliveryError(
            f"{peer} refused the workitem with status 0x{code:04X} {comment}".rstrip(),
            permanent=code in _PERMANENT,
        )
    finally:
        if assoc.is_established:
            assoc.release()
