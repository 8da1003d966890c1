"""The DICOM file framing (PS3.10) that the receiver puts in front of each received dataset.

pynetdicom's ``event.encoded_dataset()`` builds the same preamble and File Meta
Information through a pydicom ``FileMetaDataset``, which validates and encodes each
element and costs more than half a millisecond per instance: a sizeable share of the
receiver's budget. The File Meta Information of a received instance is always the same
six or seven elements, so it is encoded here directly.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    # Explicit VR Little Endian, as PS3.10 requires for group 0002. UI values are padded
    # with NUL, all other text with a space, to an even length.
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2s2xI", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _text(value: str, limit: int) -> bytes:
    # Values come from the peer's command set: keep them ASCII and short enough for the
    # element; a value mangled here is caught by the UID check against the dataset.
    return value.encode("ascii", errors="replace")[:limit]


def file_header(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str | None = None,
) -> bytes:
    """The preamble, ``DICM`` and File Meta Information to write before a received dataset.

    Parameters
    ----------
    sop_class_uid, sop_instance_uid : str
        The C-STORE request's Affected SOP Class and Instance UIDs.
    transfer_syntax_uid : str
        The accepted transfer syntax of the presentation context the dataset came on.
    source_ae_title : str, optional
        The calling AE title, kept as Source Application Entity Title for provenance.
    """
    body = b"".join(
        (
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", _text(sop_class_uid, 64)),
            _element(0x0002, 0x0003, b"UI", _text(sop_instance_uid, 64)),
            _element(0x0002, 0x0010, b"UI", _text(transfer_syntax_uid, 64)),
            _element(0x0002, 0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID.encode("ascii")),
            _element(0x0002, 0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")),
            _element(0x0002, 0x0016, b"AE", _text(source_ae_title.strip(), 16))
            if source_ae_title and source_ae_title.strip()
            else b"",
        )
    )
    group_length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return PREAMBLE + group_length + body
