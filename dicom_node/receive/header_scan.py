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

import struct

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_node.errors import DicomNodeError

# the elements ``extract_meta`` reads, all top-level and all below (0028,0009)
WANTED_TAGS = frozenset({
    0x00080005,  # SpecificCharacterSet: pydicom decodes LO/SH text with it
    0x00080016,  # SOPClassUID
    0x00080018,  # SOPInstanceUID
    0x00080020,  # StudyDate
    0x00080060,  # Modality
    0x0008103E,  # SeriesDescription
    0x00100020,  # PatientID
    0x00180015,  # BodyPartExamined
    0x0020000D,  # StudyInstanceUID
    0x0020000E,  # SeriesInstanceUID
    0x00200013,  # InstanceNumber
    0x00200032,  # ImagePositionPatient
    0x00200037,  # ImageOrientationPatient
    0x00201002,  # ImagesInAcquisition
    0x00280008,  # NumberOfFrames
})
_LAST_WANTED = max(WANTED_TAGS)

# explicit VR little endian: these VRs have 2 reserved bytes and a 4-byte length
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_HEADER = struct.Struct("<HH")
_SHORT_LENGTH = struct.Struct("<H")
_LONG_LENGTH = struct.Struct("<I")
_ITEM_HEADER = struct.Struct("<HHI")
_MAX_DEPTH = 16


class HeaderScanError(DicomNodeError):
    """The stream is not one this scanner follows; decode it with pydicom instead."""


def scan_header(buf: bytes, implicit_vr: bool) -> Dataset:
    """A Dataset holding the WANTED_TAGS present in a little endian dataset stream (no file meta)."""
    try:
        return Dataset(_scan(buf, implicit_vr))
    except (struct.error, ValueError, RecursionError) as exc:
        raise HeaderScanError(f"header scan stopped: {exc}") from exc


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


def _scan(buf: bytes, implicit_vr: bool) -> dict[Tag, RawDataElement]:
    found: dict[Tag, RawDataElement] = {}
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
