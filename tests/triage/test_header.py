"""parse_header's raw-bytes fast path gives what pydicom's conversion gives, or defers to it."""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import pytest
from dicom_factory import ct_slice
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

import triage.receive.header as header_module
from triage.receive.header import InstanceHeader, UnreadableDatasetError, parse_header
from triage.receive.part10 import file_header

SOP = "1.2.3.4.5"


def _element(group: int, elem: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian element (all these VRs have 2-byte lengths)."""
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    return struct.pack("<HH", group, elem) + vr.encode() + struct.pack("<H", len(value)) + value


def _raw_file(**overrides: tuple[str, bytes] | None) -> bytes:
    """A CT file built byte by byte, so values pydicom would refuse to write can be sent."""
    fields: dict[tuple[int, int], tuple[str, bytes] | None] = {
        (0x0008, 0x0005): ("CS", b"ISO_IR 100"),
        (0x0008, 0x0008): ("CS", b"ORIGINAL\\PRIMARY\\AXIAL"),
        (0x0008, 0x0016): ("UI", CTImageStorage.encode()),
        (0x0008, 0x0018): ("UI", SOP.encode()),
        (0x0008, 0x0020): ("DA", b"20260101"),
        (0x0008, 0x0030): ("TM", b"120000.5"),
        (0x0008, 0x0050): ("SH", b"ACC1"),
        (0x0008, 0x0060): ("CS", b"CT"),
        (0x0008, 0x103E): ("LO", "Thorax \xe9".encode("latin-1")),
        (0x0010, 0x0020): ("LO", b"PID1"),
        (0x0018, 0x0050): ("DS", b"3.0"),
        (0x0020, 0x000D): ("UI", b"1.2.3"),
        (0x0020, 0x000E): ("UI", b"1.2.3.4"),
        (0x0020, 0x0011): ("IS", b"2"),
        (0x0020, 0x0013): ("IS", b"17"),
        (0x0020, 0x0032): ("DS", b"-180.5\\-180.5\\1e2"),
        (0x0020, 0x0037): ("DS", b"1\\0\\0\\0\\1\\0"),
        (0x0028, 0x0010): ("US", struct.pack("<H", 512)),
        (0x0028, 0x0011): ("US", struct.pack("<H", 256)),
        (0x0028, 0x0030): ("DS", b"0.7\\0.7"),
    }
    names = {
        "image_type": (0x0008, 0x0008),
        "modality": (0x0008, 0x0060),
        "study_uid": (0x0020, 0x000D),
        "study_time": (0x0008, 0x0030),
        "thickness": (0x0018, 0x0050),
        "series_number": (0x0020, 0x0011),
        "instance_number": (0x0020, 0x0013),
        "position": (0x0020, 0x0032),
        "rows": (0x0028, 0x0010),
        "spacing": (0x0028, 0x0030),
    }
    for name, value in overrides.items():
        fields[names[name]] = value
    body = b"".join(
        _element(g, e, *field) for (g, e), field in sorted(fields.items()) if field is not None
    )
    return file_header(CTImageStorage, SOP, ExplicitVRLittleEndian) + body


def _pydicom_only(monkeypatch: pytest.MonkeyPatch, data: bytes) -> Any:
    """What parse_header answers when every field goes through pydicom's conversion."""
    with monkeypatch.context() as m:
        m.setattr(header_module, "_ascii", lambda *_a: header_module._MISSING)
        m.setattr(header_module, "_us", lambda *_a: header_module._MISSING)
        try:
            return parse_header(data)
        except UnreadableDatasetError as err:
            return type(err)


def _both(monkeypatch: pytest.MonkeyPatch, data: bytes) -> tuple[Any, Any]:
    try:
        fast: Any = parse_header(data)
    except UnreadableDatasetError as err:
        fast = type(err)
    return fast, _pydicom_only(monkeypatch, data)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"image_type": ("CS", b"ORIGINAL\\PRIMARY\\AXIAL  ")},
        {"image_type": ("CS", b" ORIGINAL\\PRIMARY")},
        {"image_type": ("CS", b"ORIGINAL\\\\AXIAL")},
        {"image_type": ("CS", b"")},
        {"image_type": None},
        {"modality": ("CS", b"CT\\MR")},
        {"modality": ("CS", "C\xc9".encode("latin-1"))},
        {"study_uid": ("UI", b"1.2.3\\1.2.4")},
        {"study_time": ("TM", b"")},
        {"thickness": ("DS", b" 2.5 ")},
        {"thickness": ("DS", b"abc")},
        {"thickness": ("DS", b"1\\2")},
        {"thickness": ("DS", b"")},
        {"series_number": ("IS", b" 7")},
        {"series_number": ("IS", b"+7")},
        {"series_number": ("IS", b"2.0")},
        {"series_number": ("IS", b"x")},
        {"instance_number": ("IS", b"1\\2")},
        {"position": ("DS", b"1.0\\ 2.0\\3")},
        {"position": ("DS", b"1.0\\nan\\3")},
        {"position": ("DS", b"1.0\\abc\\3")},
        {"study_uid": ("UI", b" 1.2.3")},
        {"study_uid": ("UI", b"1." + b"2" * 70)},
        {"position": ("DS", b"1.0\\\\3")},
        {"rows": ("SS", struct.pack("<h", 512))},
        {"rows": ("US", struct.pack("<HH", 1, 2))},
        {"spacing": ("DS", b".5\\5.")},
    ],
    ids=repr,
)
def test_fast_path_matches_pydicom(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, tuple[str, bytes] | None]
) -> None:
    fast, slow = _both(monkeypatch, _raw_file(**overrides))
    assert fast == slow


def test_an_overlong_uid_is_kept_whole_so_that_the_receiver_refuses_it() -> None:
    uid = "1." + "2" * 70
    assert parse_header(_raw_file(study_uid=("UI", uid.encode()))).study_instance_uid == uid


@pytest.mark.parametrize(
    ("syntax", "implicit", "little"),
    [
        (ExplicitVRLittleEndian, False, True),
        (ImplicitVRLittleEndian, True, True),
        (ExplicitVRBigEndian, False, False),
    ],
)
def test_fast_path_matches_pydicom_in_every_uncompressed_syntax(
    monkeypatch: pytest.MonkeyPatch, syntax: str, implicit: bool, little: bool
) -> None:
    ds = ct_slice(generate_uid(), generate_uid(), 3, rows=300, columns=200)
    ds.file_meta.TransferSyntaxUID = syntax
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit, little_endian=little)
    fast, slow = _both(monkeypatch, buf.getvalue())
    assert isinstance(fast, InstanceHeader)
    assert fast == slow
    assert (fast.rows, fast.columns, fast.transfer_syntax_uid) == (300, 200, syntax)
