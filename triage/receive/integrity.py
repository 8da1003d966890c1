"""Whether a received dataset is whole: every element fits, and Pixel Data has its size.

pydicom reads a short element without complaint (a value that claims more bytes than
remain is returned short, and the dataset simply ends there), and the header parse
stops before Pixel Data. So a slice cut in half, an element whose length runs past the
end, or Pixel Data claiming 2 GiB with 100 bytes sent would all be acknowledged with
Success, and the PACS would never resend them. This module walks the element framing of
the whole dataset, sequences and encapsulated fragments included, without converting or
decoding any value: it only reads tags and lengths, and the few image attributes that
give Pixel Data its expected size.
"""

from __future__ import annotations

import struct
import zlib

from pydicom.datadict import DicomDictionary
from pydicom.uid import UID

from triage.receive.header import UnreadableDatasetError

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

# Explicit VRs whose length field is 4 bytes, after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = frozenset((0x7FE00008, 0x7FE00009))  # Float and Double Float Pixel Data
# Top-level attributes that give native Pixel Data its length (PS3.5 8.1.1).
_SAMPLES, _PHOTOMETRIC, _FRAMES = 0x00280002, 0x00280004, 0x00280008
_ROWS, _COLUMNS, _BITS_ALLOCATED = 0x00280010, 0x00280011, 0x00280100
_IMAGE_TAGS = frozenset((_SAMPLES, _PHOTOMETRIC, _FRAMES, _ROWS, _COLUMNS, _BITS_ALLOCATED))
# Nesting deeper than any real object has; bounds a hostile dataset's recursion.
_MAX_DEPTH = 32


class IncompleteDatasetError(UnreadableDatasetError):
    """The dataset is truncated or its framing is corrupt; the message names the element."""


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walker:
    """One pass over a dataset's elements, recording the image attributes on the way."""

    def __init__(self, data: bytes | memoryview, implicit: bool, little: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.order = "<" if little else ">"
        self.image: dict[int, bytes] = {}
        self.pixel_length: int | None = None  # native Pixel Data's length in bytes
        self.fragments: int | None = None  # encapsulated Pixel Data's fragment count
        self.float_pixels = False  # Float or Double Float Pixel Data present

    def _u32(self, offset: int) -> int:
        return int(struct.unpack_from(self.order + "I", self.data, offset)[0])

    def _header(self, pos: int, end: int, implicit: bool) -> tuple[int, bytes, int, int]:
        """Tag, VR, value length and value offset of the element at ``pos``.

        The VR is the dictionary's for implicit VR (b"" when the tag is unknown).
        """
        if end - pos < 8:
            raise IncompleteDatasetError(
                f"{end - pos} stray bytes at offset {pos}, too few for an element"
            )
        group, elem = struct.unpack_from(self.order + "HH", self.data, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE:  # items and delimiters never carry a VR
            return tag, b"", self._u32(pos + 4), pos + 8
        if implicit:
            entry = DicomDictionary.get(tag)
            return tag, entry[0].encode() if entry else b"", self._u32(pos + 4), pos + 8
        vr = bytes(self.data[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if end - pos < 12:
                raise IncompleteDatasetError(f"element {_tag(tag)} is cut inside its header")
            return tag, vr, self._u32(pos + 8), pos + 12
        (length,) = struct.unpack_from(self.order + "H", self.data, pos + 6)
        return tag, vr, int(length), pos + 8

    def dataset(self, pos: int, end: int, depth: int, implicit: bool, *, in_item: bool) -> int:
        """Walk elements from ``pos``; in an undefined-length item, up to its delimiter.

        Returns the offset after the dataset (after the item delimiter, in an item).
        """
        if depth > _MAX_DEPTH:
            raise IncompleteDatasetError(f"sequences nested deeper than {_MAX_DEPTH} levels")
        while pos < end:
            tag, vr, length, value = self._header(pos, end, implicit)
            if tag == _ITEM_END and in_item:
                return value
            if length == _UNDEFINED:
                if depth == 0 and tag == _PIXEL_DATA:
                    pos = self._fragments(value, end)
                    continue
                # An undefined length is a sequence; one read as UN is encoded as implicit
                # VR little endian whatever the transfer syntax (PS3.5 6.2.2).
                pos = self._sequence(value, end, depth, implicit or vr == b"UN")
                continue
            if length > end - value:
                raise IncompleteDatasetError(
                    f"element {_tag(tag)} claims {length} bytes but only {end - value} remain"
                )
            if vr == b"SQ":
                self._defined_sequence(value, value + length, depth, implicit)
            elif depth == 0:
                if tag == _PIXEL_DATA:
                    self.pixel_length = length
                elif tag in _FLOAT_PIXEL_DATA:
                    self.float_pixels = True
                elif tag in _IMAGE_TAGS:
                    self.image[tag] = bytes(self.data[value : value + length])
            pos = value + length
        if in_item:
            raise IncompleteDatasetError("a sequence item has no end: the data ends first")
        return pos

    def _sequence(self, pos: int, end: int, depth: int, implicit: bool) -> int:
        """Walk the items of an undefined-length sequence; return the offset after it."""
        while True:
            tag, _vr, length, value = self._header(pos, end, implicit)
            if tag == _SEQUENCE_END:
                return value
            pos = self._item(tag, value, length, end, depth, implicit)

    def _defined_sequence(self, pos: int, end: int, depth: int, implicit: bool) -> None:
        """Walk the items of a defined-length sequence, which must fill it exactly."""
        while pos < end:
            tag, _vr, length, value = self._header(pos, end, implicit)
            pos = self._item(tag, value, length, end, depth, implicit)

    def _item(self, tag: int, value: int, length: int, end: int, depth: int, implicit: bool) -> int:
        if tag != _ITEM:
            raise IncompleteDatasetError(f"{_tag(tag)} inside a sequence, where an item was due")
        if length == _UNDEFINED:
            return self.dataset(value, end, depth + 1, implicit, in_item=True)
        if length > end - value:
            raise IncompleteDatasetError(
                f"a sequence item claims {length} bytes but only {end - value} remain"
            )
        self.dataset(value, value + length, depth + 1, implicit, in_item=False)
        return value + length

    def _fragments(self, pos: int, end: int) -> int:
        """Walk encapsulated Pixel Data: offset table, fragments, delimiter (PS3.5 A.4)."""
        items = 0
        while True:
            tag, _vr, length, value = self._header(pos, end, True)
            if tag == _SEQUENCE_END:
                break
            if tag != _ITEM or length == _UNDEFINED or length > end - value:
                raise IncompleteDatasetError(
                    f"encapsulated Pixel Data has a broken fragment at offset {pos}"
                )
            if items == 0 and length % 4:
                raise IncompleteDatasetError(
                    "the Basic Offset Table's length is not a multiple of 4"
                )
            items += 1
            pos = value + length
        if items == 0:
            raise IncompleteDatasetError("encapsulated Pixel Data has no Basic Offset Table")
        self.fragments = items - 1
        return value


def _us(raw: bytes | None, order: str) -> int | None:
    if raw is None or len(raw) < 2:
        return None
    return int(struct.unpack_from(order + "H", raw)[0])


def _expected_native_length(walker: _Walker) -> int:
    """Rows × Columns × SamplesPerPixel × BitsAllocated / 8 × frames, in bytes."""
    image, order = walker.image, walker.order
    rows, columns = _us(image.get(_ROWS), order), _us(image.get(_COLUMNS), order)
    bits = _us(image.get(_BITS_ALLOCATED), order)
    if not rows or not columns or not bits:
        raise IncompleteDatasetError(
            "Pixel Data is present but Rows, Columns or Bits Allocated is missing or zero"
        )
    samples = _us(image.get(_SAMPLES), order) or 1
    frames = _frames(walker)
    photometric = image.get(_PHOTOMETRIC, b"").strip(b" \x00")
    if photometric == b"YBR_FULL_422":  # two samples per pixel on average (PS3.3 C.7.6.3.1.2)
        return (rows * columns * 2 * bits * frames + 7) // 8
    return (rows * columns * samples * bits * frames + 7) // 8


def _frames(walker: _Walker) -> int:
    raw = walker.image.get(_FRAMES)
    text = raw.decode("ascii", "replace").strip(" \x00") if raw else ""
    if not text:
        return 1
    try:
        frames = int(text)
    except ValueError as err:
        raise IncompleteDatasetError(f"Number of Frames {text[:16]!r} is not a number") from err
    if frames < 1:
        raise IncompleteDatasetError(f"Number of Frames is {frames}")
    return frames


def check_dataset(
    data: bytes | memoryview, offset: int, transfer_syntax_uid: str, sop_class_uid: str = ""
) -> None:
    """Check that the dataset in ``data[offset:]`` is whole.

    Every element's value must lie within the data, every sequence and item must end,
    and the last element must end exactly where the data does. An image (Rows and
    Columns, or an "... Image Storage" SOP class: a dataset cut between two elements
    before Rows looks whole otherwise) must have Pixel Data. Native Pixel Data must
    have the length its image attributes give (PS3.5 8.1.1), allowing one byte of padding
    to an even length; encapsulated Pixel Data must be an offset table and at least one
    fragment per frame, each within the data, closed by a delimiter (PS3.5 A.4).

    Raises
    ------
    IncompleteDatasetError
        If not; the message names the element and the lengths, never a value.
    """
    body: bytes | memoryview = memoryview(data)[offset:]
    if transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        try:
            body = zlib.decompress(body, -zlib.MAX_WBITS)
        except zlib.error as err:
            raise IncompleteDatasetError(f"the deflated dataset cannot be inflated: {err}") from err
    walker = _Walker(
        body,
        implicit=transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN,
        little=transfer_syntax_uid != EXPLICIT_VR_BIG_ENDIAN,
    )
    walker.dataset(0, len(body), 0, walker.implicit, in_item=False)
    if walker.fragments is not None:
        frames = _frames(walker)
        if walker.fragments < frames:
            raise IncompleteDatasetError(
                f"encapsulated Pixel Data has {walker.fragments} fragments for {frames} frames"
            )
    elif walker.pixel_length is not None:
        expected = _expected_native_length(walker)
        if walker.pixel_length not in (expected, expected + 1):
            raise IncompleteDatasetError(
                f"Pixel Data has {walker.pixel_length} bytes; Rows, Columns, Samples per "
                f"Pixel, Bits Allocated and Number of Frames call for {expected}"
            )
    elif not walker.float_pixels and (
        (_ROWS in walker.image and _COLUMNS in walker.image)
        or "Image Storage" in UID(sop_class_uid).name
    ):
        raise IncompleteDatasetError("the image has no Pixel Data")


def dataset_offset(data: bytes | memoryview) -> int:
    """Where the dataset starts in a PS3.10 file: after the preamble and the File Meta group.

    Raises
    ------
    IncompleteDatasetError
        If the File Meta Information group length is missing or runs past the data.
    """
    if len(data) < 144 or bytes(data[128:136]) != b"DICM\x02\x00\x00\x00":
        raise IncompleteDatasetError("the file has no File Meta Information group length")
    (group_length,) = struct.unpack_from("<I", data, 140)
    offset = 144 + int(group_length)
    if offset > len(data):
        raise IncompleteDatasetError("the File Meta Information runs past the end of the file")
    return offset
