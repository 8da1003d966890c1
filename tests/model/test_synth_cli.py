"""``triage-model synth``: a data set with RSNA-style labels, and a preview picture."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from model.cli import main
from model.synthetic import (
    EXAM_COLUMNS,
    IMAGE_COLUMNS,
    StudyParams,
    generate_study,
    plan_dataset,
    write_dataset,
)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_synth_writes_rsna_layout_and_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    code = main(
        [
            "synth",
            "--out",
            str(out),
            "--studies",
            "4",
            "--positive-fraction",
            "0.5",
            "--seed",
            "9",
            "--slices",
            "14",
            "--matrix",
            "128",
        ]
    )
    assert code == 0
    assert "4 studies (2 positive" in capsys.readouterr().out
    with open(out / "train.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == [*IMAGE_COLUMNS, *EXAM_COLUMNS]
    rows = _rows(out / "train.csv")
    assert len(rows) == 4 * 14
    by_study: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_study[row["StudyInstanceUID"]].append(row)
        path = out / row["StudyInstanceUID"] / row["SeriesInstanceUID"]
        assert path.is_dir()
    positives = 0
    for study, study_rows in by_study.items():
        exams = {tuple(r[c] for c in EXAM_COLUMNS) for r in study_rows}
        assert len(exams) == 1, "exam labels must repeat identically on every row"
        any_slice = any(r["pe_present_on_image"] == "1" for r in study_rows)
        negative = study_rows[0]["negative_exam_for_pe"] == "1"
        assert any_slice != negative
        positives += any_slice
        files = list((out / study).rglob("*.dcm"))
        assert len(files) == 14
    assert positives == 2
    patients = _rows(out / "patients.csv")
    assert {r["StudyInstanceUID"] for r in patients} == set(by_study)
    assert all(r["PatientID"].startswith("SYN-") for r in patients)


def test_positive_image_label_marks_the_slices_with_clot(tmp_path: Path) -> None:
    write_dataset(
        tmp_path, 2, positive_fraction=1.0, seed=4, n_slices=16, matrix=128, vary_storage=False
    )
    rows = _rows(tmp_path / "train.csv")
    labelled = {r["SOPInstanceUID"]: r["pe_present_on_image"] == "1" for r in rows}
    assert any(labelled.values()) and not all(labelled.values())
    # The labels belong to the files: the SOP Instance UID in the CSV names the file.
    for row in rows[:3]:
        ds = dcmread(
            tmp_path
            / row["StudyInstanceUID"]
            / row["SeriesInstanceUID"]
            / f"{row['SOPInstanceUID']}.dcm"
        )
        assert ds.SOPInstanceUID == row["SOPInstanceUID"]


def test_some_patients_have_two_studies(tmp_path: Path) -> None:
    summary = write_dataset(tmp_path, 4, seed=2, n_slices=8, matrix=64, second_study_fraction=1.0)
    patients = _rows(tmp_path / "patients.csv")
    ids = [r["PatientID"] for r in patients]
    assert summary.patients == len(set(ids)) == 2
    assert all(ids.count(i) == 2 for i in ids)
    by_patient: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for row in patients:
        ds = dcmread(next((tmp_path / row["StudyInstanceUID"]).rglob("*.dcm")))
        assert ds.PatientID == row["PatientID"]
        by_patient[ds.PatientID].add((str(ds.PatientName), ds.PatientBirthDate))
    assert all(len(v) == 1 for v in by_patient.values())


def test_the_plan_says_which_studies_are_written_and_their_phantoms_come_back(
    tmp_path: Path,
) -> None:
    """plan_dataset gives each written study's UID, patient and label, and its phantom."""
    args = {"seed": 3, "n_slices": 8, "matrix": 64, "second_study_fraction": 0.5}
    write_dataset(tmp_path, 6, **args)  # type: ignore[arg-type]
    plan = plan_dataset(6, **args)  # type: ignore[arg-type]
    patients = {r["StudyInstanceUID"]: r["PatientID"] for r in _rows(tmp_path / "patients.csv")}
    assert [s.identity.study_instance_uid for s in plan] == list(patients)
    assert [s.identity.patient_id for s in plan] == list(patients.values())
    labels: dict[str, int] = defaultdict(int)
    for row in _rows(tmp_path / "train.csv"):
        labels[row["StudyInstanceUID"]] |= int(row["pe_present_on_image"])
    assert [int(s.params.positive) for s in plan] == [labels[u] for u in patients]
    assert sum(s.params.positive for s in plan) == 3
    # The phantom generated again from the plan is the one written: same pixels.
    study = plan[0]
    phantom = generate_study(study.seed, study.params)
    uid = study.identity.study_instance_uid
    # Instance order and numbering vary by study; the position says which slice it is.
    by_z = {
        round(float(d.ImagePositionPatient[2]), 3): d
        for d in map(dcmread, (tmp_path / uid).rglob("*.dcm"))
    }
    ds = by_z[round(phantom.geometry.slice_z[0], 3)]
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(hu, phantom.hu[0].astype(np.float32))


def test_two_studies_of_one_patient_share_the_body() -> None:
    a = generate_study(1, StudyParams(patient_seed=50, n_slices=8, matrix=64))
    b = generate_study(2, StudyParams(patient_seed=50, n_slices=8, matrix=64))
    c = generate_study(3, StudyParams(n_slices=8, matrix=64))
    assert a.anatomy.body_a == b.anatomy.body_a != c.anatomy.body_a
    assert a.anatomy.heart_scale == b.anatomy.heart_scale
    assert a.hu.tobytes() != b.hu.tobytes()


def test_preview_outlines_emboli(tmp_path: Path) -> None:
    png = tmp_path / "preview.png"
    assert (
        main(["synth", "--preview", str(png), "--seed", "5", "--slices", "40", "--matrix", "192"])
        == 0
    )
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    red = (image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80)
    assert red.sum() > 20
    assert image.shape[0] > 500 and image.shape[1] > 500


@pytest.mark.parametrize(
    "argv",
    [
        ["synth", "--out", "x", "--studies", "0"],
        ["synth", "--out", "x", "--positive-fraction", "1.5"],
        ["synth", "--studies", "2"],
        ["synth", "--out", "x", "--difficulty", "nightmare"],
        ["nonsense"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_parallel_workers_write_the_same_data_set(tmp_path: Path) -> None:
    def files(root: Path) -> dict[Path, bytes]:
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    for workers in (1, 2):
        write_dataset(tmp_path / f"w{workers}", 3, seed=9, n_slices=8, matrix=32, workers=workers)
    one, two = files(tmp_path / "w1"), files(tmp_path / "w2")
    assert len(one) > 3 * 8
    assert one == two
