"""Weak labels for training and evaluation, read from the RSNA-STR PE CSV layout.

``train.csv`` has one row per image: ``StudyInstanceUID, SeriesInstanceUID,
SOPInstanceUID, pe_present_on_image`` plus the exam labels repeated on every row. A study
is positive when ``negative_exam_for_pe`` is 0 and ``indeterminate`` is 0; indeterminate
exams are kept out of training and evaluation, and reported.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

_REQUIRED = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "pe_present_on_image",
    "negative_exam_for_pe",
)


@dataclass
class SeriesLabels:
    """The labels of one series: the study label and one label per image."""

    study_instance_uid: str
    series_instance_uid: str
    positive: bool
    indeterminate: bool = False
    image_labels: dict[str, bool] = field(default_factory=dict)
    patient_id: str | None = None


def _flag(value: str, where: str) -> bool:
    text = value.strip()
    if text in ("0", "1", "0.0", "1.0"):
        return text.startswith("1")
    raise ValueError(f"{where}: expected 0 or 1, found {value!r}")


def read_labels(csv_path: Path) -> dict[str, SeriesLabels]:
    """Read an RSNA-style labels CSV into labels per series, keyed by Series Instance UID.

    Raises
    ------
    ValueError
        If a required column is missing, a flag is not 0/1, or one exam's rows disagree.
    """
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)}")
        series: dict[str, SeriesLabels] = {}
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path}:{line}"
            uid = row["SeriesInstanceUID"].strip()
            negative = _flag(row["negative_exam_for_pe"], where)
            indeterminate = _flag(row.get("indeterminate") or "0", where)
            entry = series.get(uid)
            if entry is None:
                entry = series[uid] = SeriesLabels(
                    study_instance_uid=row["StudyInstanceUID"].strip(),
                    series_instance_uid=uid,
                    positive=not negative and not indeterminate,
                    indeterminate=indeterminate,
                )
            elif entry.positive != (not negative and not indeterminate):
                raise ValueError(f"{where}: exam labels differ between rows of series {uid}")
            entry.image_labels[row["SOPInstanceUID"].strip()] = _flag(
                row["pe_present_on_image"], where
            )
    for entry in series.values():
        if entry.positive is False and any(entry.image_labels.values()) and not entry.indeterminate:
            raise ValueError(
                f"{csv_path}: series {entry.series_instance_uid} is a negative exam "
                "but has images labelled positive"
            )
    return series


def read_patients(csv_path: Path) -> dict[str, str]:
    """Map Study Instance UID to patient ID from a ``StudyInstanceUID,PatientID`` CSV."""
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"StudyInstanceUID", "PatientID"} <= set(reader.fieldnames or []):
            raise ValueError(f"{csv_path}: needs the columns StudyInstanceUID and PatientID")
        return {r["StudyInstanceUID"].strip(): r["PatientID"].strip() for r in reader}
