"""Fast header access for the C-STORE path: find the few top-level elements the index needs.

pydicom's reader walks every element of a ~90-element CT header through Python generators; on a
single association that alone costs about a tenth of the time budget per slice. The index needs
only top-level elements that come before the pixel module, so this scanner jumps from element to
element with ``struct`` and keeps raw copies of the wanted ones. Values are converted by pydicom
itself (``RawDataElement`` in a ``Dataset``), so charset handling and number parsing are exactly
pydicom's. Anything unusual (big endian, deflate, a nested encoding it does not follow, a length
past the end) raises ``HeaderScanError`` and the caller decodes the dataset the normal way.
"""

from __future__ import annotations

import re
import struct
from typing import cast

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from dicom_node.errors import DicomNodeError

# the elements ``extract_meta`` reads, all top-level and all below (0028,0009), with their value kind
_FIELDS: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "charset"),  # pydicom decodes LO/SH text with it
    0x00080016: ("SOPClassUID", "text"),
    0x00080018: ("SOPInstanceUID", "text"),
    0x00080020: ("StudyDate", "text"),
    0x00080050: ("AccessionNumber", "text"),
    0x00080060: ("Modality", "text"),
    0x0008103E: ("SeriesDescription", "text"),
    0x00100020: ("PatientID", "text"),
    0x00180015: ("BodyPartExamined", "text"),
    0x0020000D: ("StudyInstanceUID", "text"),
    0x0020000E: ("SeriesInstanceUID", "text"),
    0x00200013: ("InstanceNumber", "integer"),
    0x00200032: ("ImagePositionPatient", "numbers"),
    0x00200037: ("ImageOrientationPatient", "numbers"),
    0x00201002: ("ImagesInAcquisition", "integer"),
    0x00280008: ("NumberOfFrames", "integer"),
}
WANTED_TAGS = frozenset(_FIELDS)
_LAST_WANTED = max(WANTED_TAGS)
# character sets in which printable ASCII bytes mean printable ASCII (ISO 2022 code extensions and
# the Japanese sets are left to pydicom)
_ASCII_COMPATIBLE = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110",
                               "ISO_IR 126", "ISO_IR 127", "ISO_IR 138", "ISO_IR 144", "ISO_IR 148",
                               "ISO_IR 166", "ISO_IR 192", "GB18030", "GBK"})

# explicit VR little endian: these VRs have 2 reserved bytes and a 4-byte length
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_HEADER = struct.Struct("<HH")
_SHORT_LENGTH = struct.Struct("<H")
_LONG_LENGTH = struct.Struct("<I")
_ITEM_HEADER = struct.Struct("<HHI")
_MAX_DEPTH = 16
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")  # ESC (ISO 2022), NUL inside a value, line breaks...


class HeaderScanError(DicomNodeError):
    """The stream is not one this scanner follows; decode it with pydicom instead."""


def scan_header(buf: bytes, implicit_vr: bool) -> Dataset | PlainHeader:
    """The WANTED_TAGS present in a little endian dataset stream (no file meta).

    Plain printable-ASCII values come back as a ``PlainHeader`` of Python values (what pydicom
    would give, without its per-element machinery); anything else as a pydicom ``Dataset`` that
    converts them the usual way.
    """
    try:
        raw = _scan(buf, implicit_vr)
    except (struct.error, ValueError, RecursionError) as exc:
        raise HeaderScanError(f"header scan stopped: {exc}") from exc
    plain = _plain_values(raw)
    return plain if plain is not None else Dataset(cast("dict[BaseTag, DataElement | RawDataElement]", raw))


class PlainHeader(dict[str, object]):
    """Keyword -> value; the part of pydicom's Dataset interface that ``extract_meta`` uses."""

    def __getattr__(self, keyword: str) -> object:
        try:
            return self[keyword]
        except KeyError:
            raise AttributeError(keyword) from None


def _plain_values(raw: dict[BaseTag, RawDataElement]) -> PlainHeader | None:
    """Values decoded as pydicom decodes them (trailing NUL/space removed, DS as float, IS as int),
    or None as soon as one value is not plain (non-ASCII, empty number, several text values...)."""
    plain = PlainHeader()
    for tag, element in raw.items():
        keyword, kind = _FIELDS[tag]
        value = element.value
        if value is None or not value.isascii() or _CONTROL.search(value.rstrip(b"\0 ")):
            return None
        items = value.decode("ascii").rstrip("\0 ").split("\\")
        try:
            if kind == "charset":
                if not set(items) <= _ASCII_COMPATIBLE:
                    return None
                continue
            if kind == "text":
                if len(items) != 1:
                    return None
                plain[keyword] = items[0]
            elif kind == "integer":
                if len(items) != 1:
                    return None
                plain[keyword] = int(items[0])
            else:
                plain[keyword] = [float(item) for item in items]
        except ValueError:
            return None
    return plain


def _element(buf: bytes, pos: int, implicit_vr: bool) -> tuple[int, str | None, int, int]:
    """(tag, VR, value length, offset of the value) of the element at ``pos``."""
    group, elem = _HEADER.unpack_from(buf, pos)
    tag = group << 16 | elem
    if implicit_vr or group == 0xFFFE:  # item and delimiter tags carry no VR in any syntax
        return tag, None, _LONG_LENGTH.unpack_from(buf, pos + 4)[0], pos + 8
    vr = buf[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        return tag, vr.decode("ascii"), _LONG_LENGTH.unpack_from(buf, pos + 8)[0], pos + 12
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise ValueError(f"no VR at offset {pos}")
    return tag, vr.decode("ascii"), _SHORT_LENGTH.unpack_from(buf, pos + 6)[0], pos + 8


def _scan(buf: bytes, implicit_vr: bool) -> dict[BaseTag, RawDataElement]:
    found: dict[BaseTag, RawDataElement] = {}
    pos, end = 0, len(buf)
    while pos < end:
        tag, vr, length, value_at = _element(buf, pos, implicit_vr)
        if tag > _LAST_WANTED:
            break
        if length == _UNDEFINED:
            pos = _skip_sequence(buf, value_at, implicit_vr, 0)
            continue
        pos = value_at + length
        if pos > end:
            raise ValueError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end")
        if tag in WANTED_TAGS:
            found[Tag(tag)] = RawDataElement(Tag(tag), vr, length, buf[value_at:pos], value_at, implicit_vr, True)
    return found


def _skip_sequence(buf: bytes, pos: int, implicit_vr: bool, depth: int) -> int:
    """Offset just past the delimiter of an undefined-length sequence whose items start at ``pos``."""
    if depth > _MAX_DEPTH:
        raise ValueError("sequences nested too deeply")
    while True:
        group, elem, length = _ITEM_HEADER.unpack_from(buf, pos)
        tag, pos = group << 16 | elem, pos + 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise ValueError(f"expected an item at offset {pos - 8}")
        if length != _UNDEFINED:
            pos += length
            continue
        pos = _skip_item(buf, pos, implicit_vr, depth)


def _skip_item(buf: bytes, pos: int, implicit_vr: bool, depth: int) -> int:
    """Offset just past the delimiter of an undefined-length item whose elements start at ``pos``."""
    while True:
        tag, _vr, length, value_at = _element(buf, pos, implicit_vr)
        if tag == _ITEM_END:
            return value_at
        pos = (_skip_sequence(buf, value_at, implicit_vr, depth + 1) if length == _UNDEFINED
               else value_at + length)
        if pos > len(buf):
            raise ValueError("item runs past the end")
