"""Folds grouped by patient and stratified by label; RSNA label reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.folds import assign_folds, load_folds, save_folds
from model.labels import read_labels, read_patients


def test_no_patient_is_in_two_folds_and_classes_spread() -> None:
    keys, labels, groups = [], [], []
    for p in range(40):
        for s in range(1 + p % 3):  # some patients have two or three studies
            keys.append(f"1.2.{p}.{s}")
            labels.append(p % 4 == 0 or (p % 7 == 0 and s == 1))
            groups.append(f"P{p}")
    folds = assign_folds(keys, labels, groups, n_folds=5, seed=3)
    assert set(folds.values()) == {0, 1, 2, 3, 4}
    patient_folds: dict[str, set[int]] = {}
    for k, g in zip(keys, groups, strict=True):
        patient_folds.setdefault(g, set()).add(folds[k])
    assert all(len(f) == 1 for f in patient_folds.values())
    for fold in range(5):
        fold_labels = [lab for k, lab in zip(keys, labels, strict=True) if folds[k] == fold]
        assert any(fold_labels) and not all(fold_labels)
    assert assign_folds(keys, labels, groups, 5, seed=3) == folds  # seeded


def test_folds_round_trip(tmp_path: Path) -> None:
    folds = {"1.2.3": 0, "1.2.4": 1}
    save_folds(tmp_path / "folds.json", folds, {"1.2.3": "A", "1.2.4": "B"})
    assert load_folds(tmp_path / "folds.json") == folds


def test_too_few_patients_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="only 2 patients have positive studies"):
        assign_folds(
            ["a", "b", "c", "d", "e", "f"],
            [1, 1, 0, 0, 0, 0],
            ["p1", "p2", "p3", "p4", "p5", "p6"],
            n_folds=3,
        )


def test_reads_rsna_labels_written_by_the_generator(tmp_path: Path) -> None:
    from model.synthetic import write_dataset

    summary = write_dataset(
        tmp_path,
        4,
        positive_fraction=0.5,
        seed=11,
        n_slices=12,
        matrix=64,
        second_study_fraction=0.5,
    )
    labels = read_labels(tmp_path / "train.csv")
    patients = read_patients(tmp_path / "patients.csv")
    assert len(labels) == 4
    assert sum(s.positive for s in labels.values()) == summary.positives
    for series in labels.values():
        assert len(series.image_labels) == 12
        assert series.positive == any(series.image_labels.values())
        assert series.study_instance_uid in patients


def test_bad_label_files_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "train.csv"
    bad.write_text("StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID,pe_present_on_image\n")
    with pytest.raises(ValueError, match=r"missing column.*negative_exam_for_pe"):
        read_labels(bad)
    bad.write_text(
        "StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID,pe_present_on_image,negative_exam_for_pe\n"
        "1.2,1.2.1,1.2.1.1,yes,0\n"
    )
    with pytest.raises(ValueError, match=r"train.csv:2: expected 0 or 1"):
        read_labels(bad)
    bad.write_text(
        "StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID,pe_present_on_image,negative_exam_for_pe\n"
        "1.2,1.2.1,1.2.1.1,1,1\n"
    )
    with pytest.raises(ValueError, match="negative exam but has images labelled positive"):
        read_labels(bad)
