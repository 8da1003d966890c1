"""The analysed series: checks on its headers and the evidence the reports cite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from triage.logs import get_logger
from triage.report.conform import Repair, conform_dataset
from triage.report.result import AnalysisResult

log = get_logger(__name__)

# Type 2 attributes of the Patient and General Study modules that highdicom reads from
# the first evidence dataset without a default. A header may lack them (they are often
# dropped by anonymisers); an empty value is what the standard asks for then, and it
# invents nothing.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def check_sources(result: AnalysisResult, source_datasets: Sequence[Dataset]) -> str:
    """Check that the headers are one series and include every flagged slice.

    Parameters
    ----------
    result : AnalysisResult
        The result the headers belong to.
    source_datasets : Sequence[pydicom.Dataset]
        Headers of the analysed series' instances.

    Returns
    -------
    str
        The Series Instance UID of the analysed series.

    Raises
    ------
    ValueError
        When no headers are given, they span several studies or series, or a flagged
        slice has no header.
    """
    if len(source_datasets) == 0:
        raise ValueError("No source headers were given; pass at least the flagged slices' headers.")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        values = {str(ds.get(keyword, "")) for ds in source_datasets}
        if len(values) != 1 or "" in values:
            raise ValueError(
                f"The source headers have {len(values)} distinct {keyword} values (or a "
                "missing one); a report covers exactly one analysed series."
            )
    present = {str(ds.SOPInstanceUID) for ds in source_datasets}
    missing = [uid for uid in result.flagged_sop_instance_uids if uid not in present]
    if missing:
        raise ValueError(
            f"The flagged slices {missing} are not among the source headers; pass the "
            "header of every flagged slice."
        )
    return str(source_datasets[0].SeriesInstanceUID)


def conformant_header(header: Dataset, logger: Any = None) -> Dataset:
    """A conformant copy of ``header`` (see :mod:`triage.report.conform`), each change
    logged with the attribute's name and never its value."""
    conformed, repairs = conform_dataset(header)
    log_repairs(repairs, logger or log)
    return conformed


def log_repairs(repairs: Sequence[Repair], logger: Any) -> None:
    """One warning per value that was repaired or left out; the value is never logged."""
    for repair in repairs:
        logger.warning(
            "header_value_repaired" if repair.action == "repaired" else "header_value_left_out",
            attribute=repair.attribute,
            reason=repair.reason,
        )


def evidence(cited: Sequence[Dataset], patient_study: Dataset | None = None) -> list[Dataset]:
    """Return the cited headers as highdicom evidence, the first one made conformant.

    highdicom copies the patient, study and equipment of the new object from the first
    evidence dataset, fails on a missing Type 2 attribute and on some non-conformant
    values, and copies the others into an invalid object. The first header is replaced
    by a conformant copy (:func:`conformant_header`) with the missing Type 2 attributes
    added empty; the caller's datasets are left untouched.

    Parameters
    ----------
    cited : Sequence[pydicom.Dataset]
        The headers the object cites, in order.
    patient_study : pydicom.Dataset, optional
        The header to copy the patient, study and equipment from, when it is not the
        first cited one: the KOS cites only the flagged slices, and the worker hands over
        a copy it has already made conformant. Another header of the same series.
    """
    first = conformant_header(cited[0] if patient_study is None else patient_study)
    if patient_study is not None:
        # The identity of the cited instance, with the series' patient and study.
        first.SOPClassUID = cited[0].SOPClassUID
        first.SOPInstanceUID = cited[0].SOPInstanceUID
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in first:
            setattr(first, keyword, None)
    return [first, *cited[1:]]


def by_sop_instance_uid(source_datasets: Sequence[Dataset]) -> dict[str, Dataset]:
    """Index the headers by SOP Instance UID."""
    return {str(ds.SOPInstanceUID): ds for ds in source_datasets}
