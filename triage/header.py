"""The header fields that the queue indexes for each instance.

Only the header is parsed (``stop_before_pixels``); pixels are decoded later, by the
worker, never on the receiving path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from triage.errors import TriageError


class UnreadableDatasetError(TriageError):
    """The bytes are not a DICOM dataset that can be parsed."""


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """What the database keeps about one instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    image_type: str | None
    series_description: str | None
    series_number: int | None
    instance_number: int | None
    image_position_patient: str | None
    image_orientation_patient: str | None
    slice_thickness: float | None
    pixel_spacing: str | None
    rows: int | None
    columns: int | None
    # Kept for the worklist; never logged.
    patient_id: str | None
    accession_number: str | None
    study_date: str | None
    study_time: str | None


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value)[:limit]


def _multi(ds: Dataset, keyword: str) -> str | None:
    value: Any = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, str | int | float):
        return str(value)
    return "\\".join(str(v) for v in value)


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _float(ds: Dataset, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def parse_header(source: bytes | BinaryIO | Path) -> InstanceHeader:
    """Parse the header of a DICOM file (preamble and file meta included).

    Raises
    ------
    UnreadableDatasetError
        If the bytes cannot be parsed or lack the three identifying UIDs.
    """
    stream: Any = BytesIO(source) if isinstance(source, bytes) else source
    try:
        ds = dcmread(stream, stop_before_pixels=True)
        meta = ds.file_meta
        study = ds.get("StudyInstanceUID")
        series = ds.get("SeriesInstanceUID")
        sop = ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID")
        sop_class = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
        if not (study and series and sop and sop_class):
            raise UnreadableDatasetError(
                "the dataset lacks a Study, Series or SOP Instance UID or its SOP Class UID"
            )
        return InstanceHeader(
            study_instance_uid=str(study),
            series_instance_uid=str(series),
            sop_instance_uid=str(sop),
            sop_class_uid=str(sop_class),
            transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "")),
            modality=_text(ds, "Modality", 16),
            image_type=_multi(ds, "ImageType"),
            series_description=_text(ds, "SeriesDescription"),
            series_number=_int(ds, "SeriesNumber"),
            instance_number=_int(ds, "InstanceNumber"),
            image_position_patient=_multi(ds, "ImagePositionPatient"),
            image_orientation_patient=_multi(ds, "ImageOrientationPatient"),
            slice_thickness=_float(ds, "SliceThickness"),
            pixel_spacing=_multi(ds, "PixelSpacing"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            patient_id=_text(ds, "PatientID"),
            accession_number=_text(ds, "AccessionNumber", 16),
            study_date=_text(ds, "StudyDate", 8),
            study_time=_text(ds, "StudyTime", 16),
        )
    except UnreadableDatasetError:
        raise
    except (
        InvalidDicomError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        OverflowError,
        NotImplementedError,
    ) as err:
        raise UnreadableDatasetError(f"the dataset cannot be parsed: {err}") from err


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """An instance on disk, ready for its row: header, spool path and when it arrived."""

    header: InstanceHeader
    file_path: str
    file_size: int
    received_at: datetime
