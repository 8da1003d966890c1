"""The SR a PACS receives for each analysis: content, identity, determinism, validity."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
from dicom_factory import ACCESSION, BIRTH_DATE, PATIENT_ID, PATIENT_NAME, ct_slice
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, Comprehensive3DSRStorage, generate_uid

from model.synthetic import StudyIdentity, StudyParams, ct_series, generate_study
from triage import DEFAULT_MANUFACTURER
from triage.report import AnalysisResult, ReportUIDs, build_sr
from triage.report.device import Device

SHA = "0123456789abcdef" * 4
THRESHOLDS = {"stack": 0.42, "slice": 0.5}


def headers(count: int = 20, **extra: Any) -> list[Dataset]:
    """Headers of one CT series as the worker reads them (no pixel data)."""
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(count):
        ds = ct_slice(study, series, i)
        del ds.PixelData
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        out.append(ds)
    return out


def make_result(
    sources: Sequence[Dataset],
    decision: str = "present",
    *,
    flagged: Sequence[int] = (12, 11, 13),
    result_id: str = "job-12-attempt-1",
) -> AnalysisResult:
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    slice_probabilities = {uid: round(0.02 + 0.05 * i, 4) for i, uid in enumerate(uids)}
    for rank, index in enumerate(flagged):
        slice_probabilities[uids[index]] = 0.91 - 0.1 * rank
    return AnalysisResult(
        result_id=result_id,
        decision=decision,  # type: ignore[arg-type]
        stack_probability={"present": 0.8764, "absent": 0.0312}.get(decision),
        slice_probabilities=slice_probabilities if decision != "undetermined" else {},
        flagged_sop_instance_uids=[uids[i] for i in flagged],
        thresholds=THRESHOLDS,
        algorithm_name="CTPA PE triage (CNN+BiLSTM)",
        algorithm_version="pe-ctpa-bundle 2.1.0",
        bundle_sha256=SHA,
        undetermined_reason=(
            "series has 12 slices; at least 40 are needed" if decision == "undetermined" else None
        ),
    )


def write_and_read(doc: Dataset, tmp_path: Path, name: str = "sr.dcm") -> tuple[Path, Dataset]:
    path = tmp_path / name
    doc.save_as(path, enforce_file_format=True)
    return path, dcmread(path)


def assert_valid(path: Path) -> str:
    """dciodvfy reports no errors and dsrdump reads the document; returns both outputs."""
    iod = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    iod_out = iod.stdout + iod.stderr
    errors = [line for line in iod_out.splitlines() if line.startswith("Error")]
    assert not errors, iod_out
    sr = subprocess.run(["/usr/bin/dsrdump", str(path)], capture_output=True, text=True, timeout=60)
    assert sr.returncode == 0, sr.stdout + sr.stderr
    assert "error" not in (sr.stdout + sr.stderr).lower(), sr.stdout + sr.stderr
    return iod_out + sr.stdout + sr.stderr


def codes_of(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptNameCodeSequence[0]
    return concept.CodeValue, concept.CodingSchemeDesignator


def children(item: Dataset, code: tuple[str, str]) -> list[Dataset]:
    return [c for c in item.get("ContentSequence", []) if codes_of(c) == code]


def groups(ds: Dataset) -> list[Dataset]:
    (measurements,) = children(ds, ("126010", "DCM"))  # Imaging Measurements
    return children(measurements, ("125007", "DCM"))  # Measurement Group


def code_value(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptCodeSequence[0]
    return concept.CodeValue, concept.CodingSchemeDesignator


def test_positive_sr_is_in_the_study_and_says_present_with_certainty(tmp_path: Path) -> None:
    sources = headers()
    result = make_result(sources)
    hospital = Device.create(DEFAULT_MANUFACTURER, None, "General Hospital", PYDICOM_ROOT_UID)
    _, ds = write_and_read(build_sr(result, sources, device=hospital), tmp_path)

    assert ds.SOPClassUID == Comprehensive3DSRStorage
    assert ds.Modality == "SR"
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert ds.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert ds.SeriesNumber == 9901
    assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription
    assert len(ds.SeriesDescription) <= 64
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert ds.InstitutionName == "General Hospital"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"

    (observer_type,) = children(ds, ("121005", "DCM"))
    assert code_value(observer_type) == ("121007", "DCM")  # Device
    assert children(ds, ("121012", "DCM"))  # Device Observer UID

    study_group = groups(ds)[0]
    (evaluation,) = children(study_group, ("59282003", "SCT"))
    assert code_value(evaluation) == ("52101004", "SCT")
    (certainty,) = children(study_group, ("111012", "DCM"))
    value = certainty.MeasuredValueSequence[0]
    assert float(value.NumericValue) == pytest.approx(87.6)
    assert value.MeasurementUnitsCodeSequence[0].CodeValue == "%"
    (site,) = children(study_group, ("363698007", "SCT"))
    assert code_value(site) == ("39607008", "SCT")
    assert children(study_group, ("112039", "DCM"))[0].TextValue  # Tracking Identifier
    assert children(study_group, ("112040", "DCM"))[0].UID  # Tracking Unique Identifier


def test_sr_records_the_algorithm_bundle_hash_and_thresholds(tmp_path: Path) -> None:
    sources = headers()
    _, ds = write_and_read(build_sr(make_result(sources), sources), tmp_path)

    study_group = groups(ds)[0]
    (name,) = children(study_group, ("111001", "DCM"))
    (version,) = children(study_group, ("111003", "DCM"))
    parameters = [p.TextValue for p in children(study_group, ("111002", "DCM"))]
    assert name.TextValue == "CTPA PE triage (CNN+BiLSTM)"
    assert "pe-ctpa-bundle 2.1.0" in version.TextValue
    assert SHA in version.TextValue
    assert sorted(parameters) == ["slice threshold=0.5", "stack threshold=0.42"]

    # The model is Contributing Equipment too, where a PACS shows it without parsing SR.
    models = [
        e
        for e in ds.ContributingEquipmentSequence
        if e.get("ManufacturerModelName") == name.TextValue
    ]
    assert len(models) == 1
    assert list(models[0].SoftwareVersions)[:2] == ["pe-ctpa-bundle 2.1.0", SHA]
    assert models[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"


def test_one_group_per_flagged_slice_references_that_image(tmp_path: Path) -> None:
    sources = headers()
    result = make_result(sources, flagged=(12, 11, 13))
    _, ds = write_and_read(build_sr(result, sources), tmp_path)

    slice_groups = groups(ds)[1:]
    referenced = []
    for group in slice_groups:
        (image,) = children(group, ("121112", "DCM"))  # Source of Measurement
        ref = image.ReferencedSOPSequence[0]
        assert ref.ReferencedSOPClassUID == sources[0].SOPClassUID
        referenced.append(ref.ReferencedSOPInstanceUID)
        (certainty,) = children(group, ("111012", "DCM"))
        expected = round(result.slice_probabilities[ref.ReferencedSOPInstanceUID] * 100, 1)
        assert float(certainty.MeasuredValueSequence[0].NumericValue) == pytest.approx(expected)
        (evaluation,) = children(group, ("59282003", "SCT"))
        assert code_value(evaluation) == ("52101004", "SCT")
    assert referenced == list(result.flagged_sop_instance_uids)

    # Every analysed slice is evidence, and only the analysed series is.
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    (series,) = evidence.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert len(series.ReferencedSOPSequence) == len(sources)


def test_negative_sr_says_absent_with_certainty(tmp_path: Path) -> None:
    sources = headers()
    _, ds = write_and_read(build_sr(make_result(sources, "absent", flagged=()), sources), tmp_path)

    study_group, *slice_groups = groups(ds)
    assert slice_groups == []
    (evaluation,) = children(study_group, ("59282003", "SCT"))
    assert code_value(evaluation) == ("272519000", "SCT")
    (certainty,) = children(study_group, ("111012", "DCM"))
    assert float(certainty.MeasuredValueSequence[0].NumericValue) == pytest.approx(3.1)


def test_undetermined_sr_has_no_certainty_and_gives_the_reason(tmp_path: Path) -> None:
    sources = headers()
    result = make_result(sources, "undetermined", flagged=())
    _, ds = write_and_read(build_sr(result, sources), tmp_path)

    (study_group,) = groups(ds)
    (evaluation,) = children(study_group, ("59282003", "SCT"))
    assert code_value(evaluation) == ("373068000", "SCT")
    assert children(study_group, ("111012", "DCM")) == []
    (comment,) = children(study_group, ("121106", "DCM"))
    assert "at least 40 are needed" in comment.TextValue


@pytest.mark.parametrize("decision", ["present", "absent", "undetermined"])
def test_sr_passes_dciodvfy_and_dsrdump(tmp_path: Path, decision: str) -> None:
    sources = headers(PatientSex="O", StudyID="CT1234")
    flagged = (12, 11, 13) if decision == "present" else ()
    path, ds = write_and_read(
        build_sr(make_result(sources, decision, flagged=flagged), sources), tmp_path
    )

    output = assert_valid(path)
    assert "Comprehensive 3D SR Document" in output
    # highdicom reads back what it wrote, as the TID 1500 it claims to be.
    report = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert len(report.get_image_measurement_groups()) == 1 + len(flagged)


def synthetic_headers() -> list[Dataset]:
    """Headers of the project's synthetic CTPA, complete as a scanner's, read back."""
    phantom = generate_study(5, StudyParams(n_slices=16, matrix=64, positive=True))
    out: list[Dataset] = []
    for ds in ct_series(phantom, StudyIdentity.from_seed(5)):
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        out.append(dcmread(buffer, stop_before_pixels=True))
    return out


def test_sr_from_complete_headers_draws_not_even_a_warning(tmp_path: Path) -> None:
    sources = synthetic_headers()
    path, ds = write_and_read(build_sr(make_result(sources, flagged=(6, 7)), sources), tmp_path)
    output = assert_valid(path)
    assert "Warning" not in output, output
    assert ds.StudyID == sources[0].StudyID
    assert ds.PatientSex == sources[0].PatientSex


def test_rebuilding_gives_the_same_uids_and_another_result_gives_new_ones() -> None:
    sources = headers()
    first = build_sr(make_result(sources), sources)
    again = build_sr(make_result(sources), sources)
    retried = build_sr(make_result(sources, result_id="job-12-attempt-2"), sources)

    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert groups(first)[0] == groups(again)[0]  # tracking UIDs included
    assert retried.SOPInstanceUID != first.SOPInstanceUID
    assert retried.SeriesInstanceUID != first.SeriesInstanceUID

    uids = ReportUIDs.for_result(make_result(sources), sources[0].SeriesInstanceUID)
    assert first.SOPInstanceUID == uids.sr_sop_instance_uid
    assert first.SeriesInstanceUID == uids.sr_series_instance_uid
    assert (
        len({uids.sr_sop_instance_uid, uids.sr_series_instance_uid, uids.kos_sop_instance_uid}) == 3
    )


def test_uid_prefix_puts_the_uids_under_the_sites_root() -> None:
    sources = headers()
    sr = build_sr(make_result(sources), sources, uid_prefix="1.2.3.4.")
    assert sr.SOPInstanceUID.startswith("1.2.3.4.")
    assert sr.SeriesInstanceUID.startswith("1.2.3.4.")


def test_patient_and_study_are_copied_unchanged_and_nothing_is_invented(tmp_path: Path) -> None:
    # The factory's headers carry no Patient's Sex and no Study ID.
    sources = headers()
    before = [ds.to_json_dict() for ds in sources]
    _, ds = write_and_read(build_sr(make_result(sources), sources), tmp_path)

    assert str(ds.PatientName) == PATIENT_NAME
    assert ds.PatientID == PATIENT_ID
    assert ds.PatientBirthDate == BIRTH_DATE
    assert ds.AccessionNumber == ACCESSION
    assert (ds.StudyDate, ds.StudyTime) == (sources[0].StudyDate, sources[0].StudyTime)
    # Type 2: present because the IOD requires them, empty because the source has none.
    assert ds.PatientSex in (None, "")
    assert ds.StudyID in (None, "")
    # The worker's datasets are not touched.
    assert [s.to_json_dict() for s in sources] == before


def test_non_ascii_patient_name_survives(tmp_path: Path) -> None:
    sources = headers(SpecificCharacterSet="ISO_IR 192", PatientName="Müller^Jürgen")
    path, ds = write_and_read(build_sr(make_result(sources), sources), tmp_path)
    assert str(ds.PatientName) == "Müller^Jürgen"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert_valid(path)


def test_a_flagged_slice_without_a_header_is_refused() -> None:
    sources = headers()
    result = make_result(sources)
    with pytest.raises(ValueError, match="not among the source headers"):
        build_sr(
            result,
            [ds for ds in sources if ds.SOPInstanceUID != result.flagged_sop_instance_uids[0]],
        )


def test_headers_of_two_series_are_refused() -> None:
    sources = headers() + headers(2)
    with pytest.raises(ValueError, match="exactly one analysed series"):
        build_sr(make_result(sources[:20]), sources)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"decision": "undetermined"}, "no stack probability"),
        ({"stack_probability": None}, "needs its stack probability"),
        ({"stack_probability": 1.5}, r"in \[0, 1\]"),
        ({"thresholds": {"stack": float("nan")}}, r"in \[0, 1\]"),
        ({"flagged_sop_instance_uids": ["1.2.3"]}, "no entry in slice_probabilities"),
        ({"bundle_sha256": "ABC"}, "64 lowercase hexadecimal"),
        ({"algorithm_version": "x" * 65}, "Long String"),
        ({"undetermined_reason": "why"}, "cannot carry an undetermined_reason"),
        ({"decision": "maybe"}, "not one of"),
    ],
)
def test_a_contradictory_result_is_refused(change: dict[str, Any], message: str) -> None:
    fields = dict(make_result(headers(20)).__dict__)
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        AnalysisResult(**fields)
