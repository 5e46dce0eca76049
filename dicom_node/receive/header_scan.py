"""Fast header access for the C-STORE path: find the few top-level elements the index needs.

pydicom's reader walks every element of a ~90-element CT header through Python generators; on a
single association that alone costs about a tenth of the time budget per slice. The index needs
only top-level elements, so this scanner jumps from element to element with ``struct``, keeps raw
copies of the wanted ones and stops at Pixel Data, whose place it reports for the checks at the
door (``validation``). Values are converted by pydicom itself (``RawDataElement`` in a
``Dataset``), so charset handling and number parsing are exactly pydicom's.

Two kinds of trouble are told apart, and the C-STORE path refuses both (``validation``). A stream
that breaks the encoding rules (a length past the end, an odd length, an undefined length on a
value that cannot have one, elements out of order, a wanted element with the wrong VR, sequences
nested too deeply) raises ``MalformedDataset``. A stream that is not in the syntax it is read as
(no VR where explicit VR has one) raises ``HeaderScanError``. Big endian and deflated streams are
never given to the scanner.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import cast

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from dicom_node.errors import DicomNodeError

# the elements ``extract_meta`` and the door's checks read, all top-level and all before Pixel Data,
# with their value kind and the VRs they may have in an explicit VR stream
_FIELDS: dict[int, tuple[str, str, frozenset[str]]] = {
    0x00080005: ("SpecificCharacterSet", "charset", frozenset({"CS"})),  # pydicom decodes LO/SH text with it
    0x00080016: ("SOPClassUID", "text", frozenset({"UI"})),
    0x00080018: ("SOPInstanceUID", "text", frozenset({"UI"})),
    0x00080020: ("StudyDate", "text", frozenset({"DA"})),
    0x00080050: ("AccessionNumber", "text", frozenset({"SH"})),
    0x00080060: ("Modality", "text", frozenset({"CS"})),
    0x0008103E: ("SeriesDescription", "text", frozenset({"LO"})),
    0x00100020: ("PatientID", "text", frozenset({"LO"})),
    0x00180015: ("BodyPartExamined", "text", frozenset({"CS"})),
    0x0020000D: ("StudyInstanceUID", "text", frozenset({"UI"})),
    0x0020000E: ("SeriesInstanceUID", "text", frozenset({"UI"})),
    0x00200013: ("InstanceNumber", "integer", frozenset({"IS"})),
    0x00200032: ("ImagePositionPatient", "numbers", frozenset({"DS"})),
    0x00200037: ("ImageOrientationPatient", "numbers", frozenset({"DS"})),
    0x00201002: ("ImagesInAcquisition", "integer", frozenset({"IS"})),
    0x00280002: ("SamplesPerPixel", "us", frozenset({"US"})),
    0x00280008: ("NumberOfFrames", "integer", frozenset({"IS"})),
    0x00280010: ("Rows", "us", frozenset({"US"})),
    0x00280011: ("Columns", "us", frozenset({"US"})),
    0x00280100: ("BitsAllocated", "us", frozenset({"US"})),
}
WANTED_TAGS = frozenset(_FIELDS)
PIXEL_DATA = 0x7FE00010
# character sets in which printable ASCII bytes mean printable ASCII (ISO 2022 code extensions and
# the Japanese sets are left to pydicom)
_ASCII_COMPATIBLE = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110",
                               "ISO_IR 126", "ISO_IR 127", "ISO_IR 138", "ISO_IR 144", "ISO_IR 148",
                               "ISO_IR 166", "ISO_IR 192", "GB18030", "GBK"})

# explicit VR little endian: these VRs have 2 reserved bytes and a 4-byte length
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
# an undefined length is a sequence (SQ, or UN holding one) or encapsulated Pixel Data (OB, OW)
_UNDEFINED_LENGTH_VRS = frozenset({"SQ", "UN"})
_PIXEL_VRS = frozenset({"OB", "OW", "UN"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_HEADER = struct.Struct("<HH")
_SHORT_LENGTH = struct.Struct("<H")
_LONG_LENGTH = struct.Struct("<I")
_ITEM_HEADER = struct.Struct("<HHI")
_US = struct.Struct("<H")
MAX_DEPTH = 16
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")  # ESC (ISO 2022), NUL inside a value, line breaks...


class HeaderScanError(DicomNodeError):
    """The stream is not one this scanner follows: not little endian in the VR mode it is read as."""


class MalformedDataset(HeaderScanError):
    """The stream breaks the encoding rules in a way no decoder can repair; the instance is refused."""


@dataclass(frozen=True, slots=True)
class PixelElement:
    """Where Pixel Data lies in the stream: its value starts at ``offset``; ``length`` is None when it
    is undefined (encapsulated fragments follow, up to a sequence delimiter)."""

    offset: int
    length: int | None


@dataclass(frozen=True, slots=True)
class ScannedHeader:
    header: Dataset | PlainHeader
    pixel: PixelElement | None


def scan_header(buf: bytes, implicit_vr: bool) -> Dataset | PlainHeader:
    """The WANTED_TAGS present in a little endian dataset stream (no file meta); see ``scan_instance``."""
    return scan_instance(buf, implicit_vr).header


def scan_instance(buf: bytes, implicit_vr: bool) -> ScannedHeader:
    """The WANTED_TAGS present in a little endian dataset stream (no file meta) and Pixel Data's place.

    Plain printable-ASCII values come back as a ``PlainHeader`` of Python values (what pydicom
    would give, without its per-element machinery); anything else as a pydicom ``Dataset`` that
    converts them the usual way.
    """
    try:
        raw, pixel = _scan(buf, implicit_vr)
    except struct.error as exc:  # unpack_from past the end: the stream stops inside an element header
        raise MalformedDataset("the dataset ends inside an element header") from exc
    except RecursionError as exc:
        raise MalformedDataset("sequences nested too deeply") from exc
    plain = _plain_values(raw)
    header = plain if plain is not None else Dataset(cast("dict[BaseTag, DataElement | RawDataElement]", raw))
    return ScannedHeader(header, pixel)


class PlainHeader(dict[str, object]):
    """Keyword -> value; the part of pydicom's Dataset interface that ``extract_meta`` uses."""

    def __getattr__(self, keyword: str) -> object:
        try:
            return self[keyword]
        except KeyError:
            raise AttributeError(keyword) from None


def _plain_values(raw: dict[BaseTag, RawDataElement]) -> PlainHeader | None:
    """Values decoded as pydicom decodes them (trailing NUL/space removed, DS as float, IS as int,
    US as int), or None as soon as one value is not plain (non-ASCII, empty number, several text
    values...)."""
    plain = PlainHeader()
    for tag, element in raw.items():
        keyword, kind, _vrs = _FIELDS[tag]
        value = element.value
        if kind == "us":
            if value is None or len(value) != 2:
                return None
            plain[keyword] = _US.unpack(value)[0]
            continue
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


def _where(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _element(buf: bytes, pos: int, implicit_vr: bool) -> tuple[int, str | None, int, int]:
    """(tag, VR, value length, offset of the value) of the element at ``pos``."""
    group, elem = _HEADER.unpack_from(buf, pos)
    tag = group << 16 | elem
    if implicit_vr or group == 0xFFFE:  # item and delimiter tags carry no VR in any syntax
        return tag, None, _LONG_LENGTH.unpack_from(buf, pos + 4)[0], pos + 8
    vr = buf[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        return tag, vr.decode("ascii"), _LONG_LENGTH.unpack_from(buf, pos + 8)[0], pos + 12
    if len(vr) < 2:
        raise MalformedDataset("the dataset ends inside an element header")
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise HeaderScanError(f"no VR at offset {pos}")
    return tag, vr.decode("ascii"), _SHORT_LENGTH.unpack_from(buf, pos + 6)[0], pos + 8


def _defined_value_end(tag: int, length: int, value_at: int, end: int) -> int:
    if length & 1:
        raise MalformedDataset(f"element {_where(tag)} has an odd length")
    if value_at + length > end:
        raise MalformedDataset(f"element {_where(tag)} runs past the end of the dataset")
    return value_at + length


def _scan(buf: bytes, implicit_vr: bool) -> tuple[dict[BaseTag, RawDataElement], PixelElement | None]:
    found: dict[BaseTag, RawDataElement] = {}
    pos, end, previous = 0, len(buf), -1
    while pos < end:
        tag, vr, length, value_at = _element(buf, pos, implicit_vr)
        if tag <= previous:
            raise MalformedDataset(f"element {_where(tag)} is out of ascending order")
        previous = tag
        if tag == PIXEL_DATA:
            if vr is not None and vr not in _PIXEL_VRS:
                raise MalformedDataset(f"Pixel Data has VR {vr}")
            if length == _UNDEFINED:
                return found, PixelElement(value_at, None)
            _defined_value_end(tag, length, value_at, end)
            return found, PixelElement(value_at, length)
        if tag > PIXEL_DATA:
            break
        if length == _UNDEFINED:
            if vr is not None and vr not in _UNDEFINED_LENGTH_VRS:
                raise MalformedDataset(f"element {_where(tag)} of VR {vr} has an undefined length")
            if tag in WANTED_TAGS:
                raise MalformedDataset(f"element {_where(tag)} has an undefined length")
            pos = _skip_sequence(buf, value_at, implicit_vr, 1)
            continue
        pos = _defined_value_end(tag, length, value_at, end)
        if tag in WANTED_TAGS:
            if vr is not None and vr not in _FIELDS[tag][2] and vr != "UN":
                raise MalformedDataset(f"element {_where(tag)} has VR {vr}")
            found[Tag(tag)] = RawDataElement(Tag(tag), vr, length, buf[value_at:pos], value_at, implicit_vr, True)
    return found, None


def _skip_sequence(buf: bytes, pos: int, implicit_vr: bool, depth: int) -> int:
    """Offset just past the delimiter of an undefined-length sequence whose items start at ``pos``."""
    if depth > MAX_DEPTH:
        raise MalformedDataset(f"sequences nested more than {MAX_DEPTH} deep")
    end = len(buf)
    while True:
        group, elem, length = _ITEM_HEADER.unpack_from(buf, pos)
        tag, pos = group << 16 | elem, pos + 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise MalformedDataset(f"expected an item at offset {pos - 8}")
        if length != _UNDEFINED:
            pos = _defined_value_end(tag, length, pos, end)
            continue
        pos = _skip_item(buf, pos, implicit_vr, depth)


def _skip_item(buf: bytes, pos: int, implicit_vr: bool, depth: int) -> int:
    """Offset just past the delimiter of an undefined-length item whose elements start at ``pos``."""
    end = len(buf)
    while True:
        tag, vr, length, value_at = _element(buf, pos, implicit_vr)
        if tag == _ITEM_END:
            return value_at
        if length == _UNDEFINED:
            if vr is not None and vr not in _UNDEFINED_LENGTH_VRS:
                raise MalformedDataset(f"element {_where(tag)} of VR {vr} has an undefined length")
            pos = _skip_sequence(buf, value_at, implicit_vr, depth + 1)
        else:
            pos = _defined_value_end(tag, length, value_at, end)
