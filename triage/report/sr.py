"""The Comprehensive 3D SR (TID 1500) that carries one analysis back to the PACS."""

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
from triage.report.uids import ReportUIDs, derive_uid

SR_SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "AI PE triage - NOT FOR DIAGNOSTIC USE"
PULMONARY_EMBOLISM = codes.SCT.PulmonaryEmbolism  # (59282003, SCT)
CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding  # (111012, DCM)
DECISION_CODES = {
    "present": codes.SCT.Present,  # (52101004, SCT)
    "absent": codes.SCT.Absent,  # (272519000, SCT)
    "undetermined": codes.SCT.Undetermined,  # (373068000, SCT)
}
# CID 100 has no code for a CT angiogram of the chest; this is its CT entry.
PROCEDURE_REPORTED = codes.LN.CTUnspecifiedBodyRegion
COMMENT = codes.DCM.Comment  # (121106, DCM)

STUDY_TRACKING_IDENTIFIER = "PE triage: series-level result"


def percent(probability: float) -> float:
    """Express a probability in percent, rounded to a tenth.

    A tenth of a percent is finer than any calibration of the model supports, and a
    short decimal reads cleanly in a viewer.
    """
    return round(float(probability) * 100.0, 1)


def build_sr(
    result: AnalysisResult,
    source_datasets: Sequence[Dataset],
    *,
    device: Device | None = None,
    uid_prefix: str = PYDICOM_ROOT_UID,
    content_datetime: datetime.datetime | None = None,
    patient_study: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the SR that reports one analysis, in the analysed study and a new series.

    The document is a Measurement Report (TID 1500) observed by a device. Its first
    measurement group is series-level: tracking identifier and UID, the algorithm
    (name, version with bundle hash, thresholds as parameters), finding site lung,
    Pulmonary embolism = Present / Absent / Undetermined and, unless undetermined,
    Certainty of Finding in percent. Then comes one group per flagged slice, most
    probable first, each referencing its image with the slice's certainty. The
    document is PRELIMINARY, UNVERIFIED and, as the algorithm's full output,
    COMPLETE.

    Parameters
    ----------
    result : AnalysisResult
        What the analysis concluded.
    source_datasets : Sequence[pydicom.Dataset]
        Headers of the analysed series (at least the flagged slices). The patient and
        study attributes come from the first one, made conformant (see
        :mod:`triage.report.conform`); all are listed as evidence.
    device : Device or None, optional
        The software that writes the report: manufacturer, serial number, institution and
        Device Observer UID (:meth:`Device.create`); this project's name under the UID
        root when ``None``.
    uid_prefix : str, optional
        The UID root for the derived UIDs (pydicom's by default).
    content_datetime : datetime.datetime or None, optional
        Content Date and Time; now when ``None``. Pass the time the result was made to
        get a byte-stable rebuild.
    patient_study : pydicom.Dataset or None, optional
        The header to copy the patient, study and equipment from, when the caller has
        already made one conformant (and logged what changed); the first source header
        when ``None``.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The document. Its SOP Instance UID is ``ReportUIDs.for_result(...)
        .sr_sop_instance_uid``: the same for every build from the same result.

    Raises
    ------
    ValueError
        When the source headers are not one series or lack a flagged slice.
    """
    series_uid = check_sources(result, source_datasets)
    uids = ReportUIDs.for_result(result, series_uid, uid_prefix)
    device = device or Device.default(uid_prefix)
    headers = by_sop_instance_uid(source_datasets)

    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = [
        _series_group(result, uid_prefix, series_uid)
    ]
    for rank, sop_uid in enumerate(result.flagged_sop_instance_uids, start=1):
        groups.append(_slice_group(result, headers[sop_uid], rank, uid_prefix, series_uid))

    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=device.observer_context(result)
        ),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
    )
    when = content_datetime or datetime.datetime.now()
    return hd.sr.Comprehensive3DSR(
        evidence=evidence(source_datasets, patient_study),
        content=report[0],
        series_instance_uid=uids.sr_series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_sop_instance_uid,
        instance_number=1,
        manufacturer=device.manufacturer,
        # The algorithm reported everything it found; what is still missing is a
        # human's verification, which the preliminary and unverified flags carry.
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=device.institution_name,
        contributing_equipment=[device.contributing_equipment(result)],
        series_description=SERIES_DESCRIPTION,
        content_date=when.date(),
        content_time=when.time(),
        manufacturer_model_name=MODEL_NAME,
        software_versions=__version__,
        device_serial_number=device.serial_number,
    )


def algorithm_identification(result: AnalysisResult) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for the model: the version names the exact weights by their hash."""
    parameters = [
        f"{name} threshold={value:g}" for name, value in sorted(result.thresholds.items())
    ]
    return hd.sr.AlgorithmIdentification(
        name=result.algorithm_name,
        version=f"{result.algorithm_version} (bundle sha256 {result.bundle_sha256})",
        parameters=parameters,
    )


def _series_group(
    result: AnalysisResult, uid_prefix: str, series_uid: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurements = []
    if result.stack_probability is not None:
        measurements.append(
            hd.sr.Measurement(
                name=CERTAINTY_OF_FINDING,
                value=percent(result.stack_probability),
                unit=codes.UCUM.Percent,
            )
        )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(uid_prefix, result.result_id, series_uid, "tracking", "series"),
            identifier=STUDY_TRACKING_IDENTIFIER,
        ),
        algorithm_id=algorithm_identification(result),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=PULMONARY_EMBOLISM, value=DECISION_CODES[result.decision]
            )
        ],
    )
    if result.undetermined_reason:
        # highdicom has no parameter for free text in TID 1501; a TEXT item that the
        # group CONTAINS is what the template allows, and a reader needs the reason.
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=COMMENT,
                value=f"No decision: {result.undetermined_reason}",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


def _slice_group(
    result: AnalysisResult,
    header: Dataset,
    rank: int,
    uid_prefix: str,
    series_uid: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    sop_uid = str(header.SOPInstanceUID)
    instance = header.get("InstanceNumber")
    where = f"instance {instance}" if instance is not None else sop_uid
    count = len(result.flagged_sop_instance_uids)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(uid_prefix, result.result_id, series_uid, "tracking", sop_uid),
            identifier=f"PE triage: flagged slice {rank} of {count} ({where})",
        ),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
        measurements=[
            hd.sr.Measurement(
                name=CERTAINTY_OF_FINDING,
                value=percent(result.slice_probabilities[sop_uid]),
                unit=codes.UCUM.Percent,
            )
        ],
        # A flagged slice is one whose probability reached the slice threshold: the
        # algorithm's finding on that image, whatever the series-level decision.
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=PULMONARY_EMBOLISM, value=codes.SCT.Present)
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(header)],
    )
