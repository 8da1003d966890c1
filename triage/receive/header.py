"""The header fields that the queue indexes for each instance.

Only the header is parsed (``stop_before_pixels``); pixels are decoded later, by the
worker, never on the receiving path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from triage.errors import TriageError
from triage.logs import describe_error


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
    patient_name: str | None
    study_description: str | None
    accession_number: str | None
    study_date: str | None
    study_time: str | None


_MISSING = object()
_DS = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_IS = re.compile(r"[+-]?\d+")


def _ascii(ds: Dataset, keyword: str, vr: str) -> Any:
    """The element's text straight from its raw bytes, or ``_MISSING`` if unsure.

    Converting each element with pydicom costs ~40 µs (it looks up the character set
    and builds value objects every time): most of ``parse_header``'s time, on every
    C-STORE. The fields read here have VRs whose values are ASCII whatever the
    character set, so their raw bytes are enough. Anything unusual (another VR, a
    non-ASCII byte, a multi-valued field, padding inside a value) answers
    ``_MISSING``, and the caller converts with pydicom as before, errors included.
    """
    elem = ds.get_item(keyword)
    if elem is None:
        return None
    raw = elem.value
    if not isinstance(raw, bytes) or elem.VR not in (vr, None):
        return _MISSING
    if not raw.isascii():
        return _MISSING
    text = raw.decode("ascii").rstrip("\x00 ")
    if text.lstrip() != text:
        return _MISSING
    return text


def _us(ds: Dataset, keyword: str) -> Any:
    """A single US value straight from its raw bytes, or ``_MISSING`` if unsure."""
    elem = ds.get_item(keyword)
    if elem is None:
        return None
    raw = elem.value
    if not isinstance(raw, bytes) or len(raw) != 2 or elem.VR not in ("US", None):
        return _MISSING
    little = getattr(elem, "is_little_endian", True)  # a RawDataElement has it
    return int.from_bytes(raw, "little" if little else "big")


def _text(ds: Dataset, keyword: str, limit: int | None = 64, vr: str | None = None) -> str | None:
    """The value as text, cut to ``limit`` characters (``None``: never cut, for UIDs)."""
    if vr is not None:
        fast = _ascii(ds, keyword, vr)
        if fast is None or fast == "":
            return None
        if fast is not _MISSING and "\\" not in fast:
            return str(fast)[:limit]
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        # A backslash in a single-valued field: keep the text as sent ("AB\\CD"), not
        # the repr of pydicom's list ("['AB', 'CD']").
        value = "\\".join(str(v) for v in value)
    return str(value)[:limit]


def _multi(ds: Dataset, keyword: str, vr: str | None = None) -> str | None:
    if vr is not None:
        fast = _ascii(ds, keyword, vr)
        if fast is None or fast == "":
            return None
        if fast is not _MISSING:
            parts = fast.split("\\")
            # pydicom keeps each DS value's original text, so the join is the raw text
            # when every value is clean (and valid, or pydicom raises as it should).
            if all(p and p.strip() == p for p in parts) and (
                vr != "DS" or all(_DS.fullmatch(p) for p in parts)
            ):
                return str(fast)
    value: Any = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, str | int | float):
        return str(value)
    return "\\".join(str(v) for v in value)


def _int(ds: Dataset, keyword: str, vr: str | None = None) -> int | None:
    if vr == "IS":
        fast = _ascii(ds, keyword, vr)
        if fast is None or fast == "":
            return None
        if fast is not _MISSING and _IS.fullmatch(fast):
            return int(fast)
    elif vr == "US":
        fast = _us(ds, keyword)
        if fast is not _MISSING:
            return cast(int | None, fast)
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _float(ds: Dataset, keyword: str, vr: str | None = None) -> float | None:
    if vr == "DS":
        fast = _ascii(ds, keyword, vr)
        if fast is None or fast == "":
            return None
        if fast is not _MISSING and _DS.fullmatch(fast):
            return float(fast)
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
        # Not specific_tags: pydicom's filtering costs more than it saves (measured).
        ds = dcmread(stream, stop_before_pixels=True)
        meta = ds.file_meta
        study = _text(ds, "StudyInstanceUID", None, vr="UI")
        series = _text(ds, "SeriesInstanceUID", None, vr="UI")
        # From the dataset only: the File Meta of a received instance is built from the
        # C-STORE request, so falling back to it would store a dataset that lacks its
        # SOP Instance UID under whatever UID the request named.
        sop = _text(ds, "SOPInstanceUID", None, vr="UI")
        sop_class = _text(ds, "SOPClassUID", None, vr="UI")
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
            modality=_text(ds, "Modality", 16, vr="CS"),
            image_type=_multi(ds, "ImageType", vr="CS"),
            series_description=_text(ds, "SeriesDescription"),
            series_number=_int(ds, "SeriesNumber", vr="IS"),
            instance_number=_int(ds, "InstanceNumber", vr="IS"),
            image_position_patient=_multi(ds, "ImagePositionPatient", vr="DS"),
            image_orientation_patient=_multi(ds, "ImageOrientationPatient", vr="DS"),
            slice_thickness=_float(ds, "SliceThickness", vr="DS"),
            pixel_spacing=_multi(ds, "PixelSpacing", vr="DS"),
            rows=_int(ds, "Rows", vr="US"),
            columns=_int(ds, "Columns", vr="US"),
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName"),
            study_description=_text(ds, "StudyDescription"),
            # Not cut to SH's 16 characters: a shortened accession number could match
            # another order in the RIS. The column holds 64.
            accession_number=_text(ds, "AccessionNumber", 64),
            study_date=_text(ds, "StudyDate", 8, vr="DA"),
            study_time=_text(ds, "StudyTime", 16, vr="TM"),
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
        # By class and place: pydicom's message can quote the value it refused.
        raise UnreadableDatasetError(
            f"the dataset cannot be parsed ({describe_error(err)})"
        ) from err


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """An instance on disk, ready for its row: header, spool path and when it arrived."""

    header: InstanceHeader
    file_path: str
    file_size: int
    received_at: datetime
