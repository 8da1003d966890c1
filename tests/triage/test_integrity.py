"""check_dataset: whole datasets of every encoding pass; cut or inconsistent ones fail."""

from __future__ import annotations

import struct
from io import BytesIO

import numpy as np
import pytest
from dicom_factory import ct_slice
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from test_report_sr import headers, make_result

from triage.receive.integrity import IncompleteDatasetError, check_dataset, dataset_offset
from triage.report import build_sr


def _file(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _check(raw: bytes, syntax: str | None = None) -> None:
    from pydicom import dcmread

    if syntax is None:
        syntax = dcmread(BytesIO(raw), stop_before_pixels=True).file_meta.TransferSyntaxUID
    check_dataset(raw, dataset_offset(raw), str(syntax))


def _slice(syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds = ct_slice("1.2.3", "1.2.3.4", 0, rows=64, columns=64)
    ds.PixelData = (np.arange(64 * 64, dtype=np.int16) - 1000).tobytes()
    if syntax in (RLELossless, JPEG2000Lossless, JPEGLSLossless):
        ds.compress(syntax)
        return ds
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax == ExplicitVRBigEndian:
        ds.PixelData = np.frombuffer(ds.PixelData, "<i2").astype(">i2").tobytes()
    # A nested sequence, as real CT headers carry.
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "1", "99", "x"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    item.PurposeOfReferenceCodeSequence = [inner]
    ds.ReferencedImageSequence = [item, item]
    return ds


@pytest.mark.parametrize(
    "syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEG2000Lossless,
        JPEGLSLossless,
    ],
)
def test_whole_images_pass_in_every_encoding(syntax: str) -> None:
    _check(_file(_slice(syntax)))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_structured_report_with_deep_nesting_passes(syntax: str) -> None:
    sources = headers(20)
    sr = build_sr(make_result(sources), sources)
    sr.file_meta.TransferSyntaxUID = syntax
    _check(_file(sr))


def test_undefined_length_sequences_pass() -> None:
    from pydicom.sequence import Sequence

    ds = _slice()
    ds["ReferencedImageSequence"].is_undefined_length = True
    for item in ds.ReferencedImageSequence:
        item.is_undefined_length_sequence_item = True
    assert isinstance(ds.ReferencedImageSequence, Sequence)
    _check(_file(ds))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
def test_every_cut_fails(syntax: str) -> None:
    raw = _file(_slice(syntax))
    start = dataset_offset(raw)
    for cut in range(start + 1, len(raw), max(1, (len(raw) - start) // 200)):
        with pytest.raises(IncompleteDatasetError):
            _check(raw[:cut], syntax)


def test_pixel_data_length_must_match_the_image_attributes() -> None:
    ds = _slice()
    ds.NumberOfFrames = 2
    with pytest.raises(IncompleteDatasetError, match="call for 16384"):
        _check(_file(ds))
    ds.NumberOfFrames = 1
    ds.PixelData += b"\x00\x00"
    with pytest.raises(IncompleteDatasetError, match="8194 bytes"):
        _check(_file(ds))


def test_an_image_without_pixel_data_fails() -> None:
    ds = _slice()
    del ds.PixelData
    with pytest.raises(IncompleteDatasetError, match="no Pixel Data"):
        _check(_file(ds))


def test_an_image_cut_between_elements_before_rows_fails() -> None:
    """Cut there, a CT slice looks whole: only its SOP class says it is an image."""
    ds = _slice()
    raw = _file(ds)
    cut = raw.index(b"\x28\x00\x02\x00US")  # Samples per Pixel, the first image attribute
    with pytest.raises(IncompleteDatasetError, match="no Pixel Data"):
        check_dataset(raw[:cut], dataset_offset(raw), ExplicitVRLittleEndian, ds.SOPClassUID)
    # Without the SOP class it would have passed; a non-image object cut there does.
    check_dataset(raw[:cut], dataset_offset(raw), ExplicitVRLittleEndian)


def test_fewer_fragments_than_frames_fail() -> None:
    ds = _slice(RLELossless)
    ds.NumberOfFrames = 2
    with pytest.raises(IncompleteDatasetError, match="1 fragments for 2 frames"):
        _check(_file(ds))


def test_an_element_running_past_the_end_is_named() -> None:
    raw = _file(_slice())
    px = raw.index(b"\xe0\x7f\x10\x00OW")
    bad = raw[:px] + b"\x09\x00\x00\x10OB\x00\x00" + struct.pack("<I", 0xFFFFFFFE) + raw[px:]
    with pytest.raises(IncompleteDatasetError, match=r"\(0009,1000\) claims 4294967294 bytes"):
        _check(bad)


def test_hostile_nesting_is_bounded() -> None:
    # 40 undefined-length sequences, one inside the other, in implicit VR.
    opening = struct.pack("<HHI", 0x0008, 0x1140, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    body = opening * 40
    with pytest.raises(IncompleteDatasetError, match="nested deeper"):
        check_dataset(body, 0, ImplicitVRLittleEndian)
