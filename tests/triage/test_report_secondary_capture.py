"""The summary Secondary Capture series: valid (dciodvfy), in the study, the heat map burnt in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from model.synthetic import StudyParams, generate_study, write_study
from triage.report import AnalysisResult
from triage.report.secondary_capture import (
    WARNING,
    KeySlice,
    build_secondary_capture,
    slice_hu,
)

SHA = "0123456789abcdef" * 4
PATIENT_MODULE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    """A synthetic CT series as read from disk, with pixels, cranial slice first."""
    phantom = generate_study(4, StudyParams(positive=True, n_slices=20, matrix=256))
    axial = write_study(phantom, tmp_path_factory.mktemp("ct")).series[0]
    datasets = [dcmread(path) for path in axial.paths]
    return sorted(datasets, key=lambda ds: -float(ds.ImagePositionPatient[2]))


def make_result(sources: list[Dataset], decision: str = "present") -> AnalysisResult:
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    probabilities = {uid: 0.02 + 0.01 * i for i, uid in enumerate(uids)}
    probabilities[uids[8]], probabilities[uids[11]] = 0.91, 0.77
    return AnalysisResult(
        result_id="job-7-attempt-1",
        decision=decision,  # type: ignore[arg-type]
        stack_probability=0.88 if decision != "undetermined" else None,
        slice_probabilities=probabilities,
        flagged_sop_instance_uids=[uids[8], uids[11]],
        thresholds={"stack": 0.5, "slice": 0.3},
        algorithm_name="CTPA PE triage (CNN+BiLSTM)",
        algorithm_version="demo-compact-synthetic 0.3.0",
        bundle_sha256=SHA,
    )


def blob(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    rows, cols = np.indices(shape)
    distance = np.hypot(rows - centre[0], cols - centre[1])
    return np.clip(1.0 - distance / radius, 0.0, 1.0).astype(np.float32)


def key_slices(sources: list[Dataset]) -> list[KeySlice]:
    return [
        KeySlice(str(sources[i].SOPInstanceUID), slice_hu(sources[i]), blob((256, 256), c, 20))
        for i, c in ((8, (150, 60)), (11, (170, 190)))
    ]


def headers(sources: list[Dataset]) -> list[Dataset]:
    """The series' headers as the worker keeps them: without pixel data."""
    return [dcmread(ds.filename, stop_before_pixels=True) for ds in sources]


def dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_the_series_passes_dciodvfy_and_sits_in_the_study_with_its_patient(
    study: list[Dataset], tmp_path: Path
) -> None:
    images = build_secondary_capture(make_result(study), headers(study), key_slices(study))
    assert len(images) == 3  # the curve, then one per key slice
    read = []
    for number, image in enumerate(images, start=1):
        path = tmp_path / f"sc{number}.dcm"
        image.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], f"image {number}"
        read.append(dcmread(path))
    source = study[0]
    for ds in read:
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.SeriesInstanceUID == read[0].SeriesInstanceUID
        assert ds.SeriesDescription == WARNING == "AI PE triage - NOT FOR DIAGNOSTIC USE"
        for keyword in (*PATIENT_MODULE, "AccessionNumber", "StudyID", "StudyDate"):
            assert ds.get(keyword) == source.get(keyword), keyword
        assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
    assert [int(ds.InstanceNumber) for ds in read] == [1, 2, 3]
    # The key slices keep the slice's geometry, so a viewer measures in millimetres.
    assert (read[1].Rows, read[1].Columns) == (256, 256)
    assert [float(v) for v in read[1].PixelSpacing] == [float(v) for v in source.PixelSpacing]
    assert list(read[1].PatientOrientation) == ["L", "P"]
    # A rebuild gives the same UIDs, so a retried delivery resends the same instances.
    again = build_secondary_capture(make_result(study), headers(study), key_slices(study))
    assert [i.SOPInstanceUID for i in again] == [ds.SOPInstanceUID for ds in read]


def _is_grey(pixels: np.ndarray) -> np.ndarray:
    return (pixels[..., 0] == pixels[..., 1]) & (pixels[..., 1] == pixels[..., 2])


def test_the_heat_map_and_the_warning_are_burnt_into_the_pixels(study: list[Dataset]) -> None:
    keys = key_slices(study)
    images = build_secondary_capture(make_result(study), headers(study), keys)
    pixels = images[1].pixel_array
    hu = keys[0].hu
    # Where the model did not look, the slice at W700/L100, untouched.
    cold = (200, 128)
    expected = round(float(np.clip((hu[cold] + 250.0) / 700.0, 0, 1)) * 255)
    assert tuple(pixels[cold]) == (expected,) * 3
    # At the heat map's peak, colour (red at the top of the scale) over the anatomy.
    peak = pixels[150, 60].astype(int)
    assert peak[0] > peak[2] and not _is_grey(pixels[145:156, 55:66]).any()
    # The warning is written at the top left in yellow, on every image.
    for image in images:
        band = image.pixel_array[:40, :200].astype(int)
        yellow = (band[..., 0] > 200) & (band[..., 1] > 150) & (band[..., 2] < 60)
        assert yellow.sum() > 30


def test_the_curve_marks_the_threshold_and_the_key_slices(study: list[Dataset]) -> None:
    curve = build_secondary_capture(make_result(study), headers(study), key_slices(study))[0]
    pixels = curve.pixel_array.astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 120) & (pixels[..., 2] < 120)
    columns = np.flatnonzero(red[150:500].sum(axis=0) > 50)
    # The dashed threshold line at 0.3 of the plot's width (x from 70 to 488).
    assert columns.size and abs(int(np.median(columns)) - round(70 + 0.3 * 418)) <= 2
    yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 180) & (pixels[..., 2] < 60)
    # Two key-slice dots, right of the threshold, below the text band.
    dots = yellow[110:600, 200:]
    assert dots.sum() > 40


def test_nothing_is_built_for_a_negative_and_a_bad_heat_map_is_refused(
    study: list[Dataset],
) -> None:
    assert build_secondary_capture(make_result(study, "absent"), headers(study), []) == []
    hu = slice_hu(study[8])
    with pytest.raises(ValueError, match="pixel grid"):
        KeySlice(str(study[8].SOPInstanceUID), hu, np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        KeySlice(str(study[8].SOPInstanceUID), hu, np.full(hu.shape, 2.0, np.float32))
    stranger = KeySlice("1.2.3.4", hu, None)
    with pytest.raises(ValueError, match="not among the source headers"):
        build_secondary_capture(make_result(study), headers(study), [stranger])
