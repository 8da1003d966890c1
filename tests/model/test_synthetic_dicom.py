"""The synthetic DICOM study: valid headers (dciodvfy), faithful pixels, byte-identical repeats."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage

from model.synthetic import (
    Phantom,
    StudyIdentity,
    StudyParams,
    WriteOptions,
    generate_study,
    write_study,
)


def dciodvfy_errors(path: Path) -> list[str]:
    """Return the error lines dciodvfy reports for one file."""
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (dicom3tools) must be installed; .ci/run installs it"
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    # Full 512x512 images; few slices keep the suite quick.
    return generate_study(31, StudyParams(positive=True, difficulty="easy", n_slices=24))


@pytest.mark.parametrize(
    ("syntax", "signed", "intercept", "uid"),
    [
        ("explicit", False, None, "1.2.840.10008.1.2.1"),
        ("implicit", True, None, "1.2.840.10008.1.2"),
        ("explicit", True, -1024, "1.2.840.10008.1.2.1"),
        ("rle", False, None, "1.2.840.10008.1.2.5"),
        ("jpeg-ls", True, None, "1.2.840.10008.1.2.4.80"),
        ("jpeg2000", False, None, "1.2.840.10008.1.2.4.90"),
        ("jpeg2000", True, None, "1.2.840.10008.1.2.4.90"),
    ],
)
def test_ct_files_are_valid_and_decode_to_the_phantom(
    tmp_path: Path, phantom: Phantom, syntax: str, signed: bool, intercept: int | None, uid: str
) -> None:
    options = WriteOptions(transfer_syntax=syntax, signed=signed, rescale_intercept=intercept)
    study = write_study(phantom, tmp_path, options)
    axial = study.axial
    assert len(axial.paths) == phantom.n_slices
    assert dciodvfy_errors(axial.paths[0]) == []
    for k in (0, int(np.argmax(phantom.slice_labels)), phantom.n_slices - 1):
        ds = dcmread(axial.paths[k])
        assert ds.file_meta.TransferSyntaxUID == uid
        assert ds.SOPInstanceUID == axial.sop_instance_uids[k] == axial.paths[k].stem
        assert ds.PixelRepresentation == int(signed)
        assert ds.BitsStored == (16 if signed else 12) and ds.HighBit == ds.BitsStored - 1
        assert ds.RescaleIntercept == (
            intercept if intercept is not None else (0 if signed else -1024)
        )
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        assert np.array_equal(hu, phantom.hu[k])


def test_headers_describe_a_synthetic_ctpa(tmp_path: Path, phantom: Phantom) -> None:
    study = write_study(phantom, tmp_path, WriteOptions(instance_order="feet_first"))
    first, last = (dcmread(study.axial.paths[i]) for i in (0, -1))
    assert first.SOPClassUID == CTImageStorage and first.Modality == "CT"
    assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert str(first.PatientName).startswith("SYNTHETIC^PHANTOM")
    assert first.PatientID.startswith("SYN-") and first.AccessionNumber.startswith("SYNACC")
    assert first.StudyInstanceUID == last.StudyInstanceUID == study.identity.study_instance_uid
    assert first.SeriesInstanceUID == last.SeriesInstanceUID
    assert len(first.StudyDate) == 8 and first.StudyTime
    assert first.Manufacturer and first.ManufacturerModelName and first.KVP
    assert float(first.SliceThickness) == pytest.approx(phantom.geometry.slice_thickness)
    assert [float(v) for v in first.PixelSpacing] == pytest.approx(
        [phantom.geometry.pixel_spacing] * 2
    )
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    # Slice 0 is the most cranial; with feet-first numbering it has the highest number.
    assert float(first.ImagePositionPatient[2]) > float(last.ImagePositionPatient[2])
    assert first.InstanceNumber == phantom.n_slices and last.InstanceNumber == 1
    spacing = float(first.ImagePositionPatient[2]) - float(
        dcmread(study.axial.paths[1]).ImagePositionPatient[2]
    )
    assert spacing == pytest.approx(phantom.geometry.slice_thickness, abs=1e-3)


def test_shuffled_file_names_hide_the_slice_order(tmp_path: Path, phantom: Phantom) -> None:
    study = write_study(phantom, tmp_path, WriteOptions(file_names="shuffled"))
    names = [p.name for p in study.axial.paths]
    assert sorted(names) == [f"IM{i:06d}.dcm" for i in range(1, phantom.n_slices + 1)]
    assert names != sorted(names)


def test_extra_series_are_valid(tmp_path: Path) -> None:
    small = generate_study(32, StudyParams(positive=False, n_slices=6))
    study = write_study(small, tmp_path, WriteOptions(localizer=True, thin=True, dose_report=True))
    kinds = {s.kind: s for s in study.series}
    assert set(kinds) == {"axial", "thin", "localizer", "dose_report"}
    assert len({s.series_instance_uid for s in study.series}) == 4
    for series in study.series:
        assert dciodvfy_errors(series.paths[0]) == [], series.kind
    scout = dcmread(kinds["localizer"].paths[0])
    assert list(scout.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert scout.Rows > 100 and scout.Columns == 512
    thin = dcmread(kinds["thin"].paths[0])
    axial = dcmread(kinds["axial"].paths[0])
    assert float(thin.SliceThickness) == pytest.approx(float(axial.SliceThickness) / 3, rel=1e-3)
    assert len(kinds["thin"].paths) == 3 * (small.n_slices - 1) + 1
    assert float(thin.ImagePositionPatient[2]) == pytest.approx(
        float(axial.ImagePositionPatient[2])
    )
    assert thin.FrameOfReferenceUID == axial.FrameOfReferenceUID
    dose = dcmread(kinds["dose_report"].paths[0])
    assert dose.SOPClassUID == SecondaryCaptureImageStorage
    assert dose.SeriesDescription == "Dose Report"
    assert list(dose.ImageType)[:2] == ["DERIVED", "SECONDARY"]


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    params = StudyParams(positive=True, n_slices=8, matrix=128)
    options = WriteOptions(transfer_syntax="jpeg-ls", signed=True, dose_report=True)
    for name in ("a", "b"):
        write_study(generate_study(5, params), tmp_path / name, options)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.dcm"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.dcm"))
    assert files_a == files_b and len(files_a) == 9
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_two_studies_of_one_patient_share_the_patient_only() -> None:
    a, b = (
        StudyIdentity.from_seed(11, patient_number=77),
        StudyIdentity.from_seed(12, patient_number=77),
    )
    assert (a.patient_id, a.patient_name, a.patient_birth_date) == (
        b.patient_id,
        b.patient_name,
        b.patient_birth_date,
    )
    assert a.study_instance_uid != b.study_instance_uid
    assert a.accession_number != b.accession_number


def test_unknown_transfer_syntax_is_refused() -> None:
    with pytest.raises(ValueError, match="transfer syntax"):
        WriteOptions(transfer_syntax="jpeg-lossy")
