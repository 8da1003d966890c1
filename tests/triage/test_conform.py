"""Header values made conformant before a report copies them: repaired, or left empty."""

from __future__ import annotations

import io

import pytest
from dicom_factory import ct_slice
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from triage.report.conform import conform_dataset, conformant_text


def _read(ds: Dataset) -> Dataset:
    """``ds`` as a receiver reads it from a file: raw bytes, not yet converted."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return dcmread(io.BytesIO(buffer.getvalue()), stop_before_pixels=True)


def _header(keyword: str, vr: str, raw: bytes) -> Dataset:
    ds = ct_slice(generate_uid(), generate_uid(), 0)
    ds.add(DataElement(keyword, vr, raw))
    return _read(ds)


@pytest.mark.parametrize(
    ("keyword", "vr", "raw", "value"),
    [
        ("PatientBirthDate", "DA", b"1932-02-15", "19320215"),
        ("StudyDate", "DA", b"2026/01/15", "20260115"),
        ("StudyDate", "DA", b"2026.01.15", "20260115"),
        ("StudyTime", "TM", b"12:30:45.25 ", "123045.25"),
        ("StudyTime", "TM", b"12:30", "1230"),
    ],
)
def test_a_date_or_time_with_separators_is_repaired(
    keyword: str, vr: str, raw: bytes, value: str
) -> None:
    copy, repairs = conform_dataset(_header(keyword, vr, raw))
    assert copy[keyword].value == value
    assert [(r.attribute, r.action) for r in repairs] == [(keyword, "repaired")]


@pytest.mark.parametrize(
    ("keyword", "vr", "raw", "reason"),
    [
        ("PatientName", "PN", b"DOE^JOHN\\SMITH^J", "multi-valued"),
        ("PatientName", "PN", b"A" * 70, "invalid for VR PN"),
        ("AccessionNumber", "SH", b"AB\\CD|EF", "multi-valued"),
        ("AccessionNumber", "SH", b"ACC1234567890123456", "invalid for VR SH"),
        ("PatientName", "PN", "M\xfcller".encode("latin-1"), "not in the declared character set"),
        ("ReferringPhysicianName", "PN", b"DR\x00X", "invalid for VR PN"),
        ("PatientBirthDate", "DA", b"15.02.1932", "invalid for VR DA"),
    ],
)
def test_a_value_that_cannot_be_repaired_without_a_guess_is_left_empty(
    keyword: str, vr: str, raw: bytes, reason: str
) -> None:
    copy, repairs = conform_dataset(_header(keyword, vr, raw))
    assert copy[keyword].value in (None, "")
    assert [(r.attribute, r.action, r.reason) for r in repairs] == [(keyword, "left out", reason)]
    assert all(raw.decode("latin-1") not in repr(r) for r in repairs)  # never the value


def test_a_conformant_header_is_copied_unchanged_and_a_second_pass_changes_nothing() -> None:
    source = _header("PatientBirthDate", "DA", b"1932-02-15")
    source.add(DataElement("ImagePositionPatient", "DS", b"-125.000000000001\\0\\0"))
    copy, repairs = conform_dataset(source)
    assert len(repairs) == 1  # only the date: image attributes are not copied, nor checked
    assert "ImagePositionPatient" not in copy and "PixelData" not in copy
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID"):
        assert copy[keyword].value == source[keyword].value
    again, more = conform_dataset(copy)
    assert more == [] and again == copy


def test_non_ascii_text_is_copied_in_utf8() -> None:
    ds = ct_slice(generate_uid(), generate_uid(), 0)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "M\xfcller^J\xfcrgen"
    copy, repairs = conform_dataset(_read(ds))
    assert repairs == []
    assert (copy.SpecificCharacterSet, str(copy.PatientName)) == (
        "ISO_IR 192",
        "M\xfcller^J\xfcrgen",
    )


def test_a_value_kept_outside_a_header_is_checked_before_it_goes_into_one() -> None:
    assert conformant_text("AccessionNumber", "ZZACC1") == ("ZZACC1", None)
    text, repair = conformant_text("AccessionNumber", "AB\\CD|EF")
    assert text == "" and repair is not None and repair.reason == "multi-valued"
