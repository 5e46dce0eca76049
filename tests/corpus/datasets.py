"""Malformed C-STORE datasets, built element by element from a small valid CT image.

Each ``DatasetCase`` is the dataset stream as a sender would put it on the wire (no file meta),
the transfer syntax of the presentation context it goes over, and the statuses the node may
answer. ``good_stream`` is the same image, well formed: the node stores it (the corpus test checks
that first, so every case differs from an accepted instance by its one fault).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
ROWS = COLUMNS = 16
PIXELS = bytes(range(256)) * 2  # 16 x 16 x 16 bits
OUT_OF_RESOURCES, DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
UNDEFINED = 0xFFFFFFFF
_FIRST = 8 + 10  # (0008,0005) "ISO_IR 100": the offset after the first element of a stream


@dataclass
class Element:
    """One element as encoded: ``length`` overrides the value's true length (None: the true one)."""

    tag: int
    vr: str
    value: bytes
    length: int | None = None


def _text(value: str, pad: bytes = b" ") -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def base_elements(sop_uid: str, study_uid: str, series_uid: str, instance: int = 1) -> list[Element]:
    """A valid 16 x 16 CT slice, in ascending tag order."""
    return [
        Element(0x00080005, "CS", _text("ISO_IR 100")),
        Element(0x00080016, "UI", _text(CT, b"\0")),
        Element(0x00080018, "UI", _text(sop_uid, b"\0")),
        Element(0x00080020, "DA", _text("20260102")),
        Element(0x00080060, "CS", _text("CT")),
        Element(0x00100010, "PN", _text("Door^Corpus")),
        Element(0x00100020, "LO", _text("DOOR-1")),
        Element(0x0020000D, "UI", _text(study_uid, b"\0")),
        Element(0x0020000E, "UI", _text(series_uid, b"\0")),
        Element(0x00200013, "IS", _text(str(instance))),
        Element(0x00200032, "DS", _text(f"-8\\-8\\{instance * 2.5:g}")),
        Element(0x00200037, "DS", _text("1\\0\\0\\0\\1\\0")),
        Element(0x00280002, "US", _us(1)),
        Element(0x00280004, "CS", _text("MONOCHROME2")),
        Element(0x00280010, "US", _us(ROWS)),
        Element(0x00280011, "US", _us(COLUMNS)),
        Element(0x00280100, "US", _us(16)),
        Element(0x00280101, "US", _us(12)),
        Element(0x00280102, "US", _us(11)),
        Element(0x00280103, "US", _us(0)),
        Element(0x7FE00010, "OW", PIXELS),
    ]


def encode(elements: list[Element], explicit: bool = True) -> bytes:
    """Little endian encoding of ``elements`` as given (order, VR and lengths are not checked)."""
    out = bytearray()
    for e in elements:
        length = len(e.value) if e.length is None else e.length
        out += struct.pack("<HH", e.tag >> 16, e.tag & 0xFFFF)
        if not explicit or e.tag >> 16 == 0xFFFE:
            out += struct.pack("<I", length)
        elif e.vr in _LONG_VRS:
            out += e.vr.encode("latin-1") + b"\0\0" + struct.pack("<I", length)
        else:
            out += e.vr.encode("latin-1") + struct.pack("<H", length & 0xFFFF)
        out += e.value
    return bytes(out)


def good_stream(explicit: bool = True, instance: int = 1) -> tuple[str, bytes]:
    """(SOP Instance UID, stream) of a well-formed slice with fresh UIDs."""
    sop = generate_uid()
    return sop, encode(base_elements(sop, generate_uid(), generate_uid(), instance), explicit)


@dataclass
class DatasetCase:
    name: str
    stream: bytes
    statuses: frozenset[int]
    syntax: str = ExplicitVRLittleEndian
    sop_class: str = CT
    sop_uid: str = field(default_factory=generate_uid)


def _mutated(change: Callable[[list[Element]], list[Element] | None], explicit: bool = True) -> tuple[str, bytes]:
    sop = generate_uid()
    elements = base_elements(sop, generate_uid(), generate_uid())
    changed = change(elements)
    return sop, encode(changed if changed is not None else elements, explicit)


def _at(elements: list[Element], tag: int) -> Element:
    return next(e for e in elements if e.tag == tag)


def _without(*tags: int) -> Callable[[list[Element]], list[Element]]:
    return lambda elements: [e for e in elements if e.tag not in tags]


def _set(tag: int, **changes: object) -> Callable[[list[Element]], None]:
    def change(elements: list[Element]) -> None:
        element = _at(elements, tag)
        for key, value in changes.items():
            setattr(element, key, value)
    return change


def _all(*changes: Callable[[list[Element]], list[Element] | None]) -> Callable[[list[Element]], list[Element]]:
    def change(elements: list[Element]) -> list[Element]:
        for one in changes:
            elements = one(elements) or elements
        return elements
    return change


def _insert(*extra: Element) -> Callable[[list[Element]], list[Element]]:
    return lambda elements: sorted([*elements, *extra], key=lambda e: e.tag)


def _nested(depth: int) -> bytes:
    """``depth`` undefined-length sequences, each in an undefined-length item of the one above."""
    head = struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0" + struct.pack("<I", UNDEFINED)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (head + item) * depth + (item_end + seq_end) * depth


def _with_prefix(prefix: bytes) -> tuple[str, bytes]:
    """A valid stream with ``prefix`` spliced in after (0008,0005), where a sequence could sit."""
    sop, stream = good_stream()
    return sop, stream[:_FIRST] + prefix + stream[_FIRST:]


def _fragments(*items: bytes, delimiter: bool = True) -> bytes:
    body = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(i)) + i for i in items)
    return body + (struct.pack("<HHI", 0xFFFE, 0xE0DD, 0) if delimiter else b"")


def _encapsulated(value: bytes, length: int = UNDEFINED) -> tuple[str, bytes]:
    """An 8-bit image whose Pixel Data is ``value`` (encapsulated items) of ``length``."""
    def change(elements: list[Element]) -> None:
        pixel = _at(elements, 0x7FE00010)
        pixel.vr, pixel.value, pixel.length = "OB", value, length
        _at(elements, 0x00280100).value = _us(8)
        _at(elements, 0x00280101).value = _us(8)
        _at(elements, 0x00280102).value = _us(7)
    return _mutated(change)


def _case(name: str, made: tuple[str, bytes], *statuses: int, syntax: str = ExplicitVRLittleEndian,
          sop_class: str = CT) -> DatasetCase:
    sop, stream = made
    return DatasetCase(name, stream, frozenset(statuses), syntax, sop_class, sop)


def dataset_cases() -> list[DatasetCase]:
    """Every malformed dataset of the corpus; ``max_dataset_mb`` and ``max_pixel_mb`` of 1 assumed."""
    rng = random.Random(13)
    sop, good = good_stream()
    jpeg = _fragments(b"", b"\xff\xd8\xff\xd9" * 4)
    cases = [
        # truncated files
        _case("truncated to 1 byte", (sop, good[:1]), CANNOT_UNDERSTAND),
        _case("truncated inside the first element header", (sop, good[:6]), CANNOT_UNDERSTAND),
        _case("truncated inside a UID", (sop, good[:40]), CANNOT_UNDERSTAND),
        _case("truncated inside Pixel Data", (sop, good[:-100]), CANNOT_UNDERSTAND),
        _case("truncated after the Pixel Data header", (sop, good[:-len(PIXELS)]), CANNOT_UNDERSTAND),
        _case("implicit VR truncated inside Pixel Data", (sop, good_stream(False)[1][:-3]), CANNOT_UNDERSTAND,
              syntax=ImplicitVRLittleEndian),
        # wrong VRs
        _case("SOP Instance UID with VR US", _mutated(_set(0x00080018, vr="US")), CANNOT_UNDERSTAND),
        _case("Rows with VR UI", _mutated(_set(0x00280010, vr="UI")), CANNOT_UNDERSTAND),
        _case("Study UID with VR SQ", _mutated(_set(0x0020000D, vr="SQ")), CANNOT_UNDERSTAND),
        _case("lower-case VR", _mutated(_set(0x00080018, vr="ui")), CANNOT_UNDERSTAND),
        _case("NUL bytes as VR", _mutated(_set(0x00080060, vr="\0\0")), CANNOT_UNDERSTAND),
        _case("Pixel Data with VR UT", _mutated(_set(0x7FE00010, vr="UT")), CANNOT_UNDERSTAND),
        # lengths past the end
        _case("UID length past the end", _mutated(_set(0x0020000E, length=0xFFF0)), CANNOT_UNDERSTAND),
        _case("private OB length past the end",
              _mutated(_insert(Element(0x00291010, "OB", b"\0" * 8, 0x7FFFFFF0))), CANNOT_UNDERSTAND),
        _case("implicit VR first length past the end", _mutated(_set(0x00080005, length=0xFFFFFF00), explicit=False),
              CANNOT_UNDERSTAND, syntax=ImplicitVRLittleEndian),
        _case("item length past the end",
              _with_prefix(struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0" + struct.pack("<I", UNDEFINED)
                           + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFF0)), CANNOT_UNDERSTAND),
        # odd lengths
        _case("SOP Instance UID of odd length", _mutated(_set(0x00080018, value=b"1.2.3")), CANNOT_UNDERSTAND),
        _case("private LO of odd length", _mutated(_insert(Element(0x00291011, "LO", b"abc"))), CANNOT_UNDERSTAND),
        _case("Pixel Data of odd length", _mutated(_set(0x7FE00010, value=PIXELS[:-1])), CANNOT_UNDERSTAND),
        # undefined lengths in the wrong place
        _case("undefined length on UT", _mutated(_insert(Element(0x00204000, "UT", b"", UNDEFINED))),
              CANNOT_UNDERSTAND),
        _case("implicit VR undefined length on a UID", _mutated(_set(0x00080018, length=UNDEFINED), explicit=False),
              CANNOT_UNDERSTAND, syntax=ImplicitVRLittleEndian),
        _case("sequence never delimited", (sop, good[:_FIRST] + struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0"
                                           + struct.pack("<II", UNDEFINED, 0xE000FFFE) + struct.pack("<I", UNDEFINED)
                                           + struct.pack("<HH", 0x0008, 0x1150) + b"UI\2\0" + b"1\0"),
              CANNOT_UNDERSTAND),
        _case("element where an item should be", _with_prefix(
            struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0" + struct.pack("<I", UNDEFINED)
            + struct.pack("<HH", 0x0008, 0x1150) + b"UI" + struct.pack("<H", 2) + b"1\0"), CANNOT_UNDERSTAND),
        _case("native Pixel Data of undefined length", _mutated(_set(0x7FE00010, length=UNDEFINED, vr="OB")),
              CANNOT_UNDERSTAND),
        # deep sequence nesting
        _case("sequences nested 40 deep", _with_prefix(_nested(40)), CANNOT_UNDERSTAND),
        _case("sequences nested 5000 deep", _with_prefix(_nested(5000)), CANNOT_UNDERSTAND),
        # huge declared sizes
        _case("pixel bomb 65535 x 65535 x 1000 frames", _mutated(_all(
            _set(0x00280010, value=_us(65535)), _set(0x00280011, value=_us(65535)),
            _insert(Element(0x00280008, "IS", _text("1000"))))), OUT_OF_RESOURCES),
        _case("pixels over max_pixel_mb", _mutated(_all(
            _set(0x00280010, value=_us(1024)), _set(0x00280011, value=_us(1024)))), OUT_OF_RESOURCES),
        _case("dataset over max_dataset_mb", _mutated(_insert(Element(0x00291012, "OB", b"\0" * (1536 * 1024)))),
              OUT_OF_RESOURCES),
        # wrong pixel length
        _case("Pixel Data 2 bytes short", _mutated(_set(0x7FE00010, value=PIXELS[:-2])), DOES_NOT_MATCH),
        _case("Pixel Data empty", _mutated(_set(0x7FE00010, value=b"")), DOES_NOT_MATCH),
        _case("Rows doubled", _mutated(_set(0x00280010, value=_us(2 * ROWS))), DOES_NOT_MATCH),
        _case("three frames declared, one sent", _mutated(_insert(Element(0x00280008, "IS", _text("3")))),
              DOES_NOT_MATCH),
        _case("BitsAllocated 32 on 16-bit data", _mutated(_set(0x00280100, value=_us(32))), DOES_NOT_MATCH),
        _case("SamplesPerPixel 3 on one sample", _mutated(_set(0x00280002, value=_us(3))), DOES_NOT_MATCH),
        _case("BitsAllocated 12", _mutated(_set(0x00280100, value=_us(12))), DOES_NOT_MATCH),
        _case("Rows 0", _mutated(_set(0x00280010, value=_us(0))), DOES_NOT_MATCH),
        _case("NumberOfFrames not a number", _mutated(_insert(Element(0x00280008, "IS", _text("abc")))),
              DOES_NOT_MATCH),
        _case("NumberOfFrames 0", _mutated(_insert(Element(0x00280008, "IS", _text("0")))), DOES_NOT_MATCH),
        # missing or malformed required attributes
        _case("no Rows", _mutated(_without(0x00280010)), DOES_NOT_MATCH),
        _case("no Columns", _mutated(_without(0x00280011)), DOES_NOT_MATCH),
        _case("no BitsAllocated", _mutated(_without(0x00280100)), DOES_NOT_MATCH),
        _case("no Pixel Data", _mutated(_without(0x7FE00010)), DOES_NOT_MATCH),
        _case("no Study Instance UID", _mutated(_without(0x0020000D)), CANNOT_UNDERSTAND),
        _case("no Series Instance UID", _mutated(_without(0x0020000E)), CANNOT_UNDERSTAND),
        _case("Series UID that climbs out of the store",
              _mutated(_set(0x0020000E, value=_text("../../../etc/x", b"\0"))), CANNOT_UNDERSTAND),
        _case("SOP Instance UID with letters", _mutated(_set(0x00080018, value=_text("1.2.abc.4", b"\0"))),
              CANNOT_UNDERSTAND),
        _case("Study UID of 66 characters", _mutated(_set(0x0020000D, value=_text("1." + "2" * 64, b"\0"))),
              CANNOT_UNDERSTAND),
        # SOP Class that does not match
        _case("dataset says MR, the request CT", _mutated(_set(0x00080016, value=_text(MR, b"\0"))), DOES_NOT_MATCH),
        # bad transfer syntax
        _case("explicit VR stream over an implicit VR context", (sop, good), CANNOT_UNDERSTAND,
              syntax=ImplicitVRLittleEndian),
        _case("implicit VR stream over an explicit VR context", good_stream(False), CANNOT_UNDERSTAND),
        _case("little endian stream over a big endian context", good_stream(), CANNOT_UNDERSTAND, DOES_NOT_MATCH,
              syntax=ExplicitVRBigEndian),
        _case("plain stream over a deflate context", good_stream(), CANNOT_UNDERSTAND,
              syntax=DeflatedExplicitVRLittleEndian),
        _case("native Pixel Data over a JPEG context", good_stream(), CANNOT_UNDERSTAND, syntax=JPEGBaseline8Bit),
        _case("fragment length past the end", _encapsulated(jpeg[:-8] + b"\0" * 4), CANNOT_UNDERSTAND,
              syntax=JPEGBaseline8Bit),
        _case("offset table of 2 entries for 1 frame", _encapsulated(_fragments(b"\0" * 8, b"\xff\xd8\xff\xd9")),
              DOES_NOT_MATCH, syntax=JPEGBaseline8Bit),
        _case("no fragment", _encapsulated(_fragments(b"")), DOES_NOT_MATCH, syntax=JPEGBaseline8Bit),
        _case("fragments never delimited", _encapsulated(_fragments(b"", b"\xff\xd8\xff\xd9", delimiter=False)),
              CANNOT_UNDERSTAND, syntax=JPEGBaseline8Bit),
        _case("offset table of odd size", _encapsulated(_fragments(b"\0\0", b"\xff\xd8\xff\xd9")), CANNOT_UNDERSTAND,
              syntax=JPEGBaseline8Bit),
        _case("element where a fragment should be", _encapsulated(
            _fragments(b"")[:-8] + struct.pack("<HHI", 0x0008, 0x0018, 4) + b"1.2\0"), CANNOT_UNDERSTAND,
              syntax=RLELossless),
        # elements out of order, garbage
        _case("Series UID before Study UID", _mutated(lambda es: sorted(
            es, key=lambda e: 0x0020000C if e.tag == 0x0020000E else e.tag)), CANNOT_UNDERSTAND),
        _case("an element twice", _mutated(lambda es: sorted([*es, _at(es, 0x00080060)], key=lambda e: e.tag)),
              CANNOT_UNDERSTAND),
        _case("all zero bytes", (sop, b"\0" * 600), CANNOT_UNDERSTAND),
        _case("random bytes, explicit VR", (sop, rng.randbytes(600)), CANNOT_UNDERSTAND),
        _case("random bytes, implicit VR", (sop, rng.randbytes(600)), CANNOT_UNDERSTAND,
              syntax=ImplicitVRLittleEndian),
        # found by the fuzz target: pydicom cannot look up a character set holding a NUL byte
        _case("character set with a NUL byte", _mutated(_set(0x00080005, value=b"ISO\0US")), CANNOT_UNDERSTAND),
        _case("text instead of DICOM", (sop, b"GET / HTTP/1.1\r\nHost: node\r\n\r\n" * 4), CANNOT_UNDERSTAND),
    ]
    return cases
