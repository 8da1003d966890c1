"""The Key Object Selection that lets a viewer jump to the slices flagged for PE."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_ROOT_UID

from triage import __version__
from triage.report.device import MODEL_NAME, Device
from triage.report.result import AnalysisResult
from triage.report.source import by_sop_instance_uid, check_sources, evidence
from triage.report.sr import SERIES_DESCRIPTION
from triage.report.uids import ReportUIDs

KOS_SERIES_NUMBER = 9902
OF_INTEREST = codes.DCM.OfInterest  # (113000, DCM)
KEY_OBJECT_DESCRIPTION = (
    "Slices an AI model flagged for possible pulmonary embolism, most probable first. "
    "Preliminary, not for diagnostic use."
)


def build_kos(
    result: AnalysisResult,
    source_datasets: Sequence[Dataset],
    *,
    device: Device | None = None,
    uid_prefix: str = PYDICOM_ROOT_UID,
    content_datetime: datetime.datetime | None = None,
    patient_study: Dataset | None = None,
) -> hd.ko.KeyObjectSelectionDocument | None:
    """Build the "Of Interest" key object selection of the flagged slices, for positives.

    Only a positive result is worth a radiologist's jump: for an absent or
    undetermined result, or a positive one without flagged slices, there is nothing
    to select and ``None`` is returned.

    Parameters
    ----------
    result : AnalysisResult
        What the analysis concluded.
    source_datasets : Sequence[pydicom.Dataset]
        Headers of the analysed series (at least the flagged slices). The patient and
        study attributes come from the first one, made conformant (see
        :mod:`triage.report.conform`).
    device, uid_prefix, content_datetime
        As for :func:`triage.report.build_sr`, so both objects name the same device.
    patient_study : pydicom.Dataset or None, optional
        As for :func:`triage.report.build_sr`.

    Returns
    -------
    highdicom.ko.KeyObjectSelectionDocument or None
        A document in the analysed study and a new series that references exactly the
        flagged slices, in the result's order. Its SOP Instance UID is
        ``ReportUIDs.for_result(...).kos_sop_instance_uid``.

    Raises
    ------
    ValueError
        When the source headers are not one series or lack a flagged slice.
    """
    series_uid = check_sources(result, source_datasets)
    if result.decision != "present" or not result.flagged_sop_instance_uids:
        return None
    uids = ReportUIDs.for_result(result, series_uid, uid_prefix)
    device = device or Device.default(uid_prefix)
    headers = by_sop_instance_uid(source_datasets)
    flagged = [headers[uid] for uid in result.flagged_sop_instance_uids]

    content = hd.ko.KeyObjectSelection(
        document_title=OF_INTEREST,
        referenced_objects=flagged,
        observer_device_context=device.observer_context(result),
        description=KEY_OBJECT_DESCRIPTION,
    )
    when = content_datetime or datetime.datetime.now()
    return hd.ko.KeyObjectSelectionDocument(
        # Only the selected slices: the evidence of a KOS is the set it references.
        evidence=evidence(flagged, patient_study or source_datasets[0]),
        content=content,
        series_instance_uid=uids.kos_series_instance_uid,
        series_number=KOS_SERIES_NUMBER,
        sop_instance_uid=uids.kos_sop_instance_uid,
        instance_number=1,
        manufacturer=device.manufacturer,
        institution_name=device.institution_name,
        contributing_equipment=[device.contributing_equipment(result)],
        series_description=SERIES_DESCRIPTION,
        content_date=when.date(),
        content_time=when.time(),
        manufacturer_model_name=MODEL_NAME,
        software_versions=__version__,
        device_serial_number=device.serial_number,
    )
