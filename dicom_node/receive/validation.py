"""The checks at the door: what a C-STORE must be before the node stores it.

Everything here runs on the bytes as received, before anything is written, and costs a few
microseconds per instance on the plain path: the header scan (``header_scan``) already walks the
stream up to Pixel Data, and these checks read only the elements it kept.

An instance is refused (``BadInstance``, with the status to answer and a short ErrorComment) when

- the dataset is larger than ``[node] max_dataset_mb`` (0xA700), or its pixels would decode to more
  than ``[node] max_pixel_mb`` (0xA700);
- its encoding is broken: a length past the end, an odd length, an undefined length where none
  may be, elements out of order, a wanted element with the wrong VR, sequences nested too deeply,
  bytes no decoder reads (0xC000);
- the request's SOP Class is not the presentation context's (0x0122), or the dataset's is not
  the request's (0xA900);
- Rows, Columns, BitsAllocated or Pixel Data is missing or impossible (0xA900);
- native (uncompressed) Pixel Data is shorter than Rows x Columns x SamplesPerPixel x
  NumberOfFrames x BitsAllocated / 8 (0xA900); longer is accepted, as pydicom reads the frames
  and leaves the padding;
- encapsulated Pixel Data has a defined length, fragments that do not parse up to the sequence
  delimiter, a Basic Offset Table that does not fit the frames, or fewer fragments than frames
  (0xC000 / 0xA900); and the other way round, undefined-length Pixel Data in a native syntax.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicom_node.dicom_header import Header
from dicom_node.errors import DicomNodeError
from dicom_node.receive.header_scan import (
    WANTED_TAGS,
    HeaderScanError,
    MalformedDataset,
    PixelElement,
    scan_instance,
)
from dicom_node.settings import NodeSettings
from dicom_node.settings.sections import DEFAULT_MAX_DATASET_MB, DEFAULT_MAX_PIXEL_MB

# C-STORE statuses (PS3.4 B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.4: the SOP Instance is already registered (under another series)

MEGABYTE = 1024 * 1024
ERROR_COMMENT_MAX = 64  # ErrorComment is LO
_BITS_ALLOCATED = frozenset({1, 8, 16, 32, 64})
_SAMPLES_PER_PIXEL = frozenset({1, 3, 4})
MAX_FRAGMENTS_PER_FRAME = 1000  # a frame split finer than this is not an encoder's work
MAX_FRAGMENTS = 1_000_000  # bounds the time spent counting them
_ITEM, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_ITEM_HEADER = struct.Struct("<HHI")


class BadInstance(DicomNodeError):
    """The instance lacks what the node needs; carries the status to answer.

    The message is the reason: it names elements and sizes, never a value of the header, so it
    can go to the log and, cut to 64 characters, to the peer as ErrorComment."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status

    @property
    def comment(self) -> str:
        return str(self)[:ERROR_COMMENT_MAX]


@dataclass(frozen=True)
class DoorLimits:
    """Sizes an instance may have: the dataset as received, and its pixels once decoded."""

    max_dataset_bytes: int = DEFAULT_MAX_DATASET_MB * MEGABYTE
    max_pixel_bytes: int = DEFAULT_MAX_PIXEL_MB * MEGABYTE

    @classmethod
    def of(cls, node: NodeSettings) -> DoorLimits:
        return cls(node.max_dataset_mb * MEGABYTE, node.max_pixel_mb * MEGABYTE)


def refusal_status(exc: BadInstance) -> Dataset:
    """The C-STORE response status of a refused instance, with its short reason as ErrorComment."""
    status = Dataset()
    status.Status = exc.status
    status.ErrorComment = exc.comment
    return status


def check_context(request_sop_class: str, context_sop_class: str) -> None:
    """The request must store what its presentation context was negotiated for."""
    if request_sop_class != context_sop_class:
        raise BadInstance(SOP_CLASS_NOT_SUPPORTED, "Affected SOP Class differs from the presentation context")


def screen(encoded: bytes, syntax: UID, decode: Callable[[], Dataset], limits: DoorLimits) -> Header:
    """The header of a received dataset once it passed the door's checks; raises BadInstance.

    A little endian stream is scanned, and refused when the scan finds it broken or not encoded in
    ``syntax``; a deflated or big endian one is given by ``decode`` (pydicom's full decode) and
    checked the same way.
    """
    if len(encoded) > limits.max_dataset_bytes:
        raise BadInstance(OUT_OF_RESOURCES, f"dataset of {_mb(len(encoded))} MB is over the limit of "
                                            f"{_mb(limits.max_dataset_bytes)} MB")
    if not encoded:
        raise BadInstance(CANNOT_UNDERSTAND, "the dataset is empty")
    if syntax.is_little_endian and not syntax.is_deflated:
        try:
            scanned = scan_instance(encoded, syntax.is_implicit_VR)
        except MalformedDataset as exc:
            raise BadInstance(CANNOT_UNDERSTAND, str(exc)) from exc
        except HeaderScanError as exc:
            # e.g. implicit VR data in an explicit VR context: pydicom would guess, but the stored
            # file would then say one syntax and hold another
            raise BadInstance(CANNOT_UNDERSTAND, f"not encoded as the negotiated syntax: {exc}") from exc
        pixel = scanned.pixel
        if isinstance(scanned.header, Dataset):
            _convert_wanted(scanned.header)
        view = None if pixel is None else _pixel_view(encoded, pixel)
        check_image(scanned.header, view, pixel is not None and pixel.length is None, syntax, limits)
        return scanned.header
    try:
        dataset = decode()
        _convert_wanted(dataset)
        element = dataset["PixelData"] if "PixelData" in dataset else None
        view = None if element is None else memoryview(element.value or b"")
        encapsulated = element is not None and element.is_undefined_length
    except BadInstance:
        raise
    except Exception as exc:  # pydicom raises many kinds on a malformed stream
        raise BadInstance(CANNOT_UNDERSTAND, f"cannot decode the dataset: {type(exc).__name__}") from exc
    check_image(dataset, view, encapsulated, syntax, limits, delimited=False)
    return dataset


def _convert_wanted(dataset: Dataset) -> None:
    """Have pydicom convert the elements the node reads now, so that a value it cannot decode (a
    character set it does not know, a number that is not one) is a refusal here, not later."""
    try:
        for tag in WANTED_TAGS:
            if tag in dataset:
                dataset[tag]
    except Exception as exc:  # pydicom raises many kinds on a malformed value
        raise BadInstance(CANNOT_UNDERSTAND, f"cannot decode the dataset: {type(exc).__name__}") from exc


def _pixel_view(encoded: bytes, pixel: PixelElement) -> memoryview:
    end = len(encoded) if pixel.length is None else pixel.offset + pixel.length
    return memoryview(encoded)[pixel.offset:end]


def _mb(size: int) -> str:
    return f"{size / MEGABYTE:.0f}" if size >= MEGABYTE else f"{size / MEGABYTE:.2f}"


def _count(header: Header, keyword: str, default: int | None = None) -> int:
    value = header.get(keyword)
    if value in (None, ""):
        if default is None:
            raise BadInstance(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is missing")
        return default
    if isinstance(value, bytes | bytearray) or not isinstance(value, int | str):
        raise BadInstance(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is not a number")
    try:
        return int(value)
    except ValueError:
        raise BadInstance(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is not a number") from None


def check_image(header: Header, pixel: memoryview | None, encapsulated: bool, syntax: UID, limits: DoorLimits,
                delimited: bool = True) -> None:
    """Rows, Columns, BitsAllocated, SamplesPerPixel and NumberOfFrames against Pixel Data.

    ``pixel`` is Pixel Data's value (for encapsulated data: the items, up to the end of the stream
    when ``delimited``, else as pydicom keeps them, without the sequence delimiter)."""
    rows, columns, bits = _count(header, "Rows"), _count(header, "Columns"), _count(header, "BitsAllocated")
    samples, frames = _count(header, "SamplesPerPixel", 1), _count(header, "NumberOfFrames", 1)
    if rows < 1 or columns < 1:
        raise BadInstance(DATASET_DOES_NOT_MATCH_SOP_CLASS, "Rows and Columns must be at least 1")
    if bits not in _BITS_ALLOCATED:
        raise BadInstance(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"BitsAllocated {bits} is not 1, 8, 16, 32 or 64")
    if samples not in _SAMPLES_PER_PIXEL:
        raise BadInstance(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"SamplesPerPixel {samples} is not 1, 3 or 4")
    if frames < 1:
        raise BadInstance(DATASET_DOES_NOT_MATCH_SOP_CLASS, "NumberOfFrames must be at least 1")
    decoded = (rows * columns * samples * frames * bits + 7) // 8
    if decoded > limits.max_pixel_bytes:
        raise BadInstance(OUT_OF_RESOURCES, f"pixels decode to {_mb(decoded)} MB, over the limit of "
                                            f"{_mb(limits.max_pixel_bytes)} MB")
    if pixel is None:
        raise BadInstance(DATASET_DOES_NOT_MATCH_SOP_CLASS, "no Pixel Data")
    if syntax.is_encapsulated:
        if not encapsulated:
            raise BadInstance(CANNOT_UNDERSTAND, "Pixel Data of a compressed syntax has a defined length")
        check_fragments(pixel, frames, delimited)
        return
    if encapsulated:
        raise BadInstance(CANNOT_UNDERSTAND, "Pixel Data of a native syntax has an undefined length")
    if len(pixel) < decoded:
        raise BadInstance(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                          f"Pixel Data has {len(pixel)} bytes, the image needs {decoded}")


def check_fragments(items: memoryview, frames: int, delimited: bool = True) -> None:
    """Encapsulated Pixel Data: a Basic Offset Table item, fragment items, the sequence delimiter
    (when ``delimited``); the table fits the frames and there is at least one fragment per frame."""
    end = len(items)

    def item_at(pos: int) -> tuple[int, int]:
        if pos + 8 > end:
            raise BadInstance(CANNOT_UNDERSTAND, "Pixel Data fragments run past the end")
        group, elem, length = _ITEM_HEADER.unpack_from(items, pos)
        return group << 16 | elem, length

    tag, length = item_at(0)
    if tag != _ITEM or length == _UNDEFINED or length % 4 or 8 + length > end:
        raise BadInstance(CANNOT_UNDERSTAND, "Pixel Data has no valid Basic Offset Table item")
    entries = length // 4
    if entries not in (0, frames):
        raise BadInstance(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"Basic Offset Table has {entries} entries "
                                                            f"for {frames} frame(s)")
    offsets = struct.unpack_from(f"<{entries}I", items, 8)
    first = pos = 8 + length
    fragments = 0
    limit = min(MAX_FRAGMENTS, frames * MAX_FRAGMENTS_PER_FRAME)
    while not (pos == end and not delimited):
        tag, length = item_at(pos)
        if tag == _SEQUENCE_END:
            break
        if tag != _ITEM or length == _UNDEFINED or pos + 8 + length > end:
            raise BadInstance(CANNOT_UNDERSTAND, "Pixel Data holds a malformed fragment")
        fragments += 1
        if fragments > limit:
            raise BadInstance(CANNOT_UNDERSTAND, f"Pixel Data has over {limit} fragments")
        pos += 8 + length
    if fragments < frames:
        raise BadInstance(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{fragments} fragment(s) for {frames} frame(s)")
    if offsets and (offsets[0] != 0 or offsets[-1] >= pos - first
                    or any(b <= a for a, b in itertools.pairwise(offsets))):
        raise BadInstance(CANNOT_UNDERSTAND, "Basic Offset Table does not point into the fragments")
