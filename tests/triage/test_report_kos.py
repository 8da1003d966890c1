"""The Key Object Selection that lets a radiologist jump to the flagged slices."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from dicom_factory import ACCESSION, BIRTH_DATE, PATIENT_ID, PATIENT_NAME, ct_slice
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import KeyObjectSelectionDocumentStorage, generate_uid

from model.synthetic import StudyIdentity, StudyParams, ct_series, generate_study
from triage.report import AnalysisResult, ReportUIDs, build_kos, build_sr

SHA = "fedcba9876543210" * 4


def headers(count: int = 20) -> list[Dataset]:
    """Headers of one CT series as the worker reads them (no pixel data)."""
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(count):
        ds = ct_slice(study, series, i)
        del ds.PixelData
        out.append(ds)
    return out


def make_result(
    sources: Sequence[Dataset],
    decision: str = "present",
    *,
    flagged: Sequence[int] = (7, 9, 8),
    result_id: str = "job-3-attempt-1",
) -> AnalysisResult:
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    probabilities = {uid: 0.1 for uid in uids}
    for rank, index in enumerate(flagged):
        probabilities[uids[index]] = 0.95 - 0.05 * rank
    return AnalysisResult(
        result_id=result_id,
        decision=decision,  # type: ignore[arg-type]
        stack_probability=None if decision == "undetermined" else 0.9,
        slice_probabilities=probabilities,
        flagged_sop_instance_uids=[uids[i] for i in flagged],
        thresholds={"stack": 0.5, "slice": 0.5},
        algorithm_name="CTPA PE triage (CNN+BiLSTM)",
        algorithm_version="pe-ctpa-bundle 2.1.0",
        bundle_sha256=SHA,
    )


def write_and_read(doc: Dataset, tmp_path: Path) -> tuple[Path, Dataset]:
    path = tmp_path / "kos.dcm"
    doc.save_as(path, enforce_file_format=True)
    return path, dcmread(path)


def test_positive_kos_is_titled_of_interest_and_lists_exactly_the_flagged_slices(
    tmp_path: Path,
) -> None:
    sources = headers()
    result = make_result(sources)
    kos = build_kos(result, sources)
    assert kos is not None
    _, ds = write_and_read(kos, tmp_path)

    assert ds.SOPClassUID == KeyObjectSelectionDocumentStorage
    assert ds.Modality == "KO"
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert ds.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113000", "DCM")

    images = [item for item in ds.ContentSequence if item.ValueType == "IMAGE"]
    referenced = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in images]
    assert referenced == list(result.flagged_sop_instance_uids)  # most probable first
    (study,) = ds.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    evidence = {ref.ReferencedSOPInstanceUID for ref in series.ReferencedSOPSequence}
    assert evidence == set(result.flagged_sop_instance_uids)

    models = [
        e
        for e in ds.ContributingEquipmentSequence
        if e.get("ManufacturerModelName") == result.algorithm_name
    ]
    assert SHA in list(models[0].SoftwareVersions)


def test_kos_passes_dciodvfy_and_dsrdump(tmp_path: Path) -> None:
    sources = headers()
    kos = build_kos(make_result(sources), sources)
    assert kos is not None
    path, _ = write_and_read(kos, tmp_path)

    iod = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    iod_out = iod.stdout + iod.stderr
    assert not [line for line in iod_out.splitlines() if line.startswith("Error")], iod_out
    assert "KeyObjectSelectionDocument" in iod_out
    sr = subprocess.run(["/usr/bin/dsrdump", str(path)], capture_output=True, text=True, timeout=60)
    assert sr.returncode == 0, sr.stdout + sr.stderr
    assert "error" not in (sr.stdout + sr.stderr).lower(), sr.stdout + sr.stderr
    assert '"Of Interest"' in sr.stdout


def test_kos_from_complete_headers_draws_not_even_a_warning(tmp_path: Path) -> None:
    phantom = generate_study(6, StudyParams(n_slices=16, matrix=64, positive=True))
    sources = ct_series(phantom, StudyIdentity.from_seed(6))
    for ds in sources:
        del ds.PixelData
    kos = build_kos(make_result(sources, flagged=(9, 8)), sources)
    assert kos is not None
    path, _ = write_and_read(kos, tmp_path)
    iod = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    assert "Warning" not in iod.stdout + iod.stderr, iod.stdout + iod.stderr
    assert "Error" not in iod.stdout + iod.stderr, iod.stdout + iod.stderr


@pytest.mark.parametrize(
    ("decision", "flagged"),
    [("absent", ()), ("absent", (3,)), ("undetermined", ()), ("present", ())],
)
def test_no_kos_unless_positive_with_flagged_slices(decision: str, flagged: Sequence[int]) -> None:
    sources = headers()
    assert build_kos(make_result(sources, decision, flagged=flagged), sources) is None


def test_kos_uids_are_stable_per_result_and_apart_from_the_sr() -> None:
    sources = headers()
    first = build_kos(make_result(sources), sources)
    again = build_kos(make_result(sources), sources)
    other = build_kos(make_result(sources, result_id="job-3-attempt-2"), sources)
    sr = build_sr(make_result(sources), sources)
    assert first is not None and again is not None and other is not None

    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID
    assert first.SOPInstanceUID != sr.SOPInstanceUID
    assert first.SeriesInstanceUID != sr.SeriesInstanceUID
    uids = ReportUIDs.for_result(make_result(sources), sources[0].SeriesInstanceUID)
    assert first.SOPInstanceUID == uids.kos_sop_instance_uid
    # The same device observer in both documents.
    assert device_uid(first) == device_uid(sr)


def device_uid(doc: Dataset) -> str:
    (item,) = [c for c in doc.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "121012"]
    return str(item.UID)


def test_kos_copies_patient_and_study_unchanged(tmp_path: Path) -> None:
    sources = headers()
    kos = build_kos(make_result(sources), sources)
    assert kos is not None
    _, ds = write_and_read(kos, tmp_path)
    assert str(ds.PatientName) == PATIENT_NAME
    assert ds.PatientID == PATIENT_ID
    assert ds.PatientBirthDate == BIRTH_DATE
    assert ds.AccessionNumber == ACCESSION
    assert ds.PatientSex in (None, "")


def test_kos_refuses_a_flagged_slice_without_a_header() -> None:
    sources = headers()
    result = make_result(sources)
    with pytest.raises(ValueError, match="not among the source headers"):
        build_kos(result, sources[:5])
