"""The analysed series: checks on its headers and the evidence the reports cite."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from pydicom.dataset import Dataset

from triage.report.result import AnalysisResult

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


def evidence(source_datasets: Sequence[Dataset]) -> list[Dataset]:
    """Return the headers as highdicom evidence, the first one completed for the header.

    highdicom copies the patient and study of the new object from the first evidence
    dataset and fails on a missing Type 2 attribute. The first header is copied and the
    missing ones are added empty; the caller's datasets are left untouched, and no
    value present in the source is changed.
    """
    first = copy.deepcopy(source_datasets[0])
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in first:
            setattr(first, keyword, None)
    return [first, *source_datasets[1:]]


def by_sop_instance_uid(source_datasets: Sequence[Dataset]) -> dict[str, Dataset]:
    """Index the headers by SOP Instance UID."""
    return {str(ds.SOPInstanceUID): ds for ds in source_datasets}
