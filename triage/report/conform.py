"""Conformant copies of header values, for the reports and messages that repeat them.

Real scanners and PACSes send headers that break the standard: dates with dashes,
times with colons, a name with a backslash, an accession number of 23 characters or
with two values, bytes that do not match the declared character set. pydicom reads
them, but highdicom refuses some of them and writes others into an invalid object, so
a positive study would never be reported.

Before a value is copied, it is decoded strictly, checked against its VR and its value
multiplicity, and then:

- repaired when the repair cannot change its meaning (the separators of a date or a
  time, the padding of a UID), or
- left out: an empty value, which is what the standard asks for a Type 2 attribute
  whose value is unknown, and what a Type 3 attribute may have.

A guess is never made: an over-long name or accession number is not cut, because a
shortened identifier could match another patient or order. Each :class:`Repair` names
the attribute and the reason, never the value, so it can be logged.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

from pydicom import config
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.valuerep import validate_value

#: VRs whose values are text in the dataset's character set (PS3.5 6.1.2.3).
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
#: VRs whose values are text in the default repertoire, whatever the character set.
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
#: Text VRs that hold one value, in which a backslash is an ordinary character.
_SINGLE_VALUED_VRS = frozenset({"ST", "LT", "UT", "UR"})

# Control characters, which no VR allows except ESC (ISO 2022 code extensions) and, in
# the text VRs, TAB, LF, FF and CR. pydicom's validation does not look for them.
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_TEXT_VRS = frozenset({"ST", "LT", "UT"})
_DATE = re.compile(r"(\d{4})[-/.](\d{2})[-/.](\d{2})")
_TIME = re.compile(r"(\d{2}):(\d{2})(?::(\d{2}(?:\.\d{1,6})?))?")

UTF8 = "ISO_IR 192"

#: What a report copies from the analysed images' first header: SOP identity, study,
#: equipment and dates (group 0008), patient (0010), clinical trial (0012), study (0032)
#: and visit (0038), and these. Acquisition and image attributes are not copied, so
#: an odd value among them (a DS of 17 characters) is neither checked nor logged.
_COPIED_GROUPS = frozenset({0x0008, 0x0010, 0x0012, 0x0032, 0x0038})
_COPIED_KEYWORDS = frozenset(
    {"StudyInstanceUID", "SeriesInstanceUID", "StudyID", "DeviceSerialNumber", "SoftwareVersions"}
)


@dataclass(frozen=True)
class Repair:
    """One change to a copied value: which attribute, what was done and why (no value)."""

    attribute: str
    action: str  # "repaired" or "left out"
    reason: str


def conform_dataset(source: Dataset) -> tuple[Dataset, list[Repair]]:
    """Return a conformant copy of what a report copies from ``source``, and the changes.

    The copy holds the SOP identity and the patient, study and equipment attributes
    (nested sequences included), with decoded values only, so it is written in UTF-8
    (ISO_IR 192) when a value is not ASCII, and in the default repertoire otherwise.
    Private attributes are not copied: no report repeats them.

    Parameters
    ----------
    source : pydicom.Dataset
        A header as read from a file; it is not changed.

    Returns
    -------
    (pydicom.Dataset, list of Repair)
        The copy, and one entry per value repaired or left out.
    """
    repairs: list[Repair] = []
    encodings = _encodings(source)
    copy = _conform(source, encodings, "", repairs)
    if hasattr(source, "file_meta"):
        copy.file_meta = source.file_meta
    if any(_non_ascii(elem) for elem in copy.iterall()):
        copy.SpecificCharacterSet = UTF8
    elif "SpecificCharacterSet" in copy:
        del copy.SpecificCharacterSet
    return copy, repairs


def conformant_text(keyword: str, text: str | None) -> tuple[str, Repair | None]:
    """``text`` as a conformant value of the attribute ``keyword``, or ``""``.

    For values kept outside a DICOM header (the database's accession number and
    patient ID) that go into one (a UPS workitem).
    """
    if not text:
        return "", None
    tag = BaseTag(_tag(keyword))
    values, reason = _check(tag, dictionary_VR(tag), text)
    if reason is None:
        return "\\".join(values), None
    return "", Repair(keyword, "left out", reason)


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword} is not a DICOM keyword.")
    return tag


def _encodings(ds: Dataset) -> list[str]:
    elem = ds.get_item("SpecificCharacterSet")
    if elem is None:
        return []
    raw = elem.value
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace").strip(" \x00").split("\\")
    terms = [raw] if isinstance(raw, str) else list(raw or [])
    return [str(t).strip() for t in terms]


def _conform(source: Dataset, encodings: list[str], path: str, repairs: list[Repair]) -> Dataset:
    copy = Dataset()
    for tag in list(source.keys()):
        tag = BaseTag(tag)
        if tag.is_private or tag == 0x7FE00010 or tag.element == 0:
            continue
        keyword = keyword_for_tag(tag)
        if not path and tag.group not in _COPIED_GROUPS and keyword not in _COPIED_KEYWORDS:
            continue
        name = path + (keyword or str(tag))
        raw = source.get_item(tag)
        if raw is None:
            continue
        vr = raw.VR or _dictionary_vr(tag)
        if vr == "SQ":
            items = _items(source, tag)
            if items is None:
                repairs.append(Repair(name, "left out", "unreadable sequence"))
                copy.add(DataElement(tag, "SQ", DicomSequence([])))
                continue
            copy.add(
                DataElement(
                    tag,
                    "SQ",
                    DicomSequence(
                        _conform(item, encodings, f"{name}[{i}].", repairs)
                        for i, item in enumerate(items)
                    ),
                )
            )
            continue
        if vr not in _CHARSET_VRS and vr not in _ASCII_VRS:
            _copy_other(source, copy, tag, name, repairs)
            continue
        text, reason = _decode(raw, vr, encodings)
        values: list[str] = []
        if reason is None and text is not None:
            # Trailing padding (a space, a UID's NUL) is the encoding's, not the value's.
            text = text.rstrip("\x00" if vr == "UI" else " \x00")
            fixed = _repair(vr, text)
            values, reason = _check(tag, vr, fixed)
            if reason is None and fixed != text:
                repairs.append(Repair(name, "repaired", f"not in the {vr} format"))
        if reason is not None:
            repairs.append(Repair(name, "left out", reason))
            values = []
        value: Any = values if len(values) > 1 else (values[0] if values else None)
        copy.add(DataElement(tag, vr, value))
    return copy


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _items(source: Dataset, tag: BaseTag) -> DicomSequence | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = source[tag].value
    except Exception:  # pydicom raises many kinds for a corrupt sequence
        return None
    return value if isinstance(value, DicomSequence) else None


def _copy_other(
    source: Dataset, copy: Dataset, tag: BaseTag, name: str, repairs: list[Repair]
) -> None:
    """A binary or numeric element, copied as pydicom converts it, or left out."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            copy.add(source[tag])
    except Exception:  # its bytes do not fit its VR; nothing a report needs
        repairs.append(Repair(name, "left out", "unreadable value"))


def _decode(raw: Any, vr: str, encodings: list[str]) -> tuple[str | None, str | None]:
    """The element's text, decoded strictly, or a reason why it cannot be."""
    value = raw.value
    if value is None:
        return None, None
    if isinstance(value, bytes):
        try:
            if vr in _ASCII_VRS or not encodings or encodings == ["ISO_IR 6"]:
                text = value.decode("ascii")
            elif len(python := convert_encodings(encodings)) == 1:
                text = value.decode(python[0])
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    text = decode_bytes(value, python, set())
        except (UnicodeError, LookupError, ValueError, UserWarning):
            return None, "not in the declared character set"
        # A replacement character is a decoding that failed upstream.
        return (None, "not in the declared character set") if "\ufffd" in text else (text, None)
    # Already converted by pydicom (the predictor read it): a replacement character
    # means that the bytes did not decode.
    items = value if isinstance(value, MultiValue | list) else [value]
    text = "\\".join("" if v is None else str(v) for v in items)
    if "\ufffd" in text:
        return None, "not in the declared character set"
    return text, None


def _repair(vr: str, text: str) -> str:
    """Trim a UID's spaces, and rewrite a date's or a time's separators."""
    if vr == "UI":
        return "\\".join(uid.strip(" \x00") for uid in text.split("\\"))
    if vr == "DA" and (match := _DATE.fullmatch(text.strip())):
        return "".join(match.groups())
    if vr == "TM" and (match := _TIME.fullmatch(text.strip())):
        return "".join(g for g in match.groups() if g)
    return text


def _check(tag: BaseTag, vr: str, text: str) -> tuple[list[str], str | None]:
    """Split ``text`` into values; a reason if it breaks its VM or VR."""
    if text == "":
        return [], None
    values = [text] if vr in _SINGLE_VALUED_VRS else text.split("\\")
    try:
        vm = str(dictionary_VM(tag))
    except KeyError:
        vm = "1-n"
    if vm == "1" and len(values) > 1:
        return [], "multi-valued"
    control = _TEXT_CONTROL if vr in _TEXT_VRS else _CONTROL
    for value in values:
        if control.search(value):
            return [], f"invalid for VR {vr}"
        try:
            validate_value(vr, value, config.RAISE)
        except ValueError:
            return [], f"invalid for VR {vr}"
    return values, None


def _non_ascii(elem: DataElement) -> bool:
    values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
    return elem.VR in _CHARSET_VRS and any(v is not None and not str(v).isascii() for v in values)
