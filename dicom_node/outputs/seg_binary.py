"""Fast BINARY SEG frames: highdicom builds the object once per plane, we replicate frames and pack the bits.

highdicom encodes a BINARY SEG one (segment, plane) frame at a time and creates one pydicom Dataset
per frame; for 100+ segments on a 300-slice CT that is tens of thousands of per-frame items, and
writing them with pydicom costs as much again. Here highdicom is called with the real source images,
the real segment descriptions and a *template* pixel array in which segment 1 is present on exactly
the planes where any segment is present. It builds every top-level attribute and one per-frame item
per plane (position, source-image derivation, dimension index). Each item is encoded once to
Explicit VR Little Endian bytes; the frames of segment ``n`` on plane ``p`` are copies of plane
``p``'s item with the two values that differ patched in (the first Dimension Index Value and the
Referenced Segment Number, both ``n`` because segments are numbered 1..N in order). Frame order is
highdicom's: segment by segment, planes in highdicom's plane order, a frame only where the segment is
present. The Per-frame Functional Groups Sequence is stored as one raw element (pydicom parses it on
access and writes it verbatim), and the Pixel Data is packed with ``np.packbits(bitorder="little")``
(PS3.5 8.1.1: first pixel in the least significant bit), frames one after the other.

Only used where frames are whole bytes (Rows*Columns a multiple of 8, so per-frame packing equals the
contiguous packing the standard requires) and segments do not overlap (label-map structures only);
:func:`build_binary` returns None otherwise and the caller lets highdicom do everything.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable, Sequence

import numpy as np
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_dataset
from pydicom.tag import BaseTag

from dicom_node.errors import OutputError
from dicom_node.outputs.common import StructureMask

PFFG_TAG = BaseTag(0x52009230)  # PerFrameFunctionalGroupsSequence
ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian
# Explicit VR Little Endian headers of the two per-frame values patched in (tag, VR, 2-byte length).
DIMENSION_INDEX_VALUES = b"\x20\x00\x57\x91UL\x08\x00"  # (0020,9157) UL, 2 values
REFERENCED_SEGMENT_NUMBER = b"\x62\x00\x0b\x00US\x02\x00"  # (0062,000B) US, 1 value
CHUNK_PLANES = 32  # planes unpacked at a time while packing one segment (memory bound)


def _encode_item(item: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, item)
    body = fp.getvalue()
    return ITEM_TAG + struct.pack("<I", len(body)) + body


def _offset(item: bytes, header: bytes) -> int:
    """Where the value after ``header`` starts in ``item``; -1 unless ``header`` occurs exactly once."""
    at = item.find(header)
    if at < 0 or item.find(header, at + 1) >= 0:
        return -1
    return at + len(header)


def build_binary(source_images: Sequence[Dataset], structures: list[StructureMask], shape: tuple[int, int, int],
                 make_segmentation: Callable[[np.ndarray], Dataset]) -> Dataset | None:
    """The BINARY SEG of ``structures`` (segment n = structures[n-1]), or None where this path does not apply.

    ``make_segmentation(pixel_array)`` is the caller's highdicom call (same arguments as for the full
    label map, only the pixel array differs).
    """
    planes, rows, columns = shape
    if (rows * columns) % 8 or len(source_images) != planes:
        return None
    present: list[np.ndarray] = []
    any_plane = np.zeros(planes, dtype=bool)
    for s in structures:
        mask = s.mask
        where = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)) + s.box[0].start
        present.append(where)
        any_plane[where] = True
    template = np.zeros(shape, dtype=np.uint8)  # untouched pages stay unallocated
    template[any_plane, 0, 0] = 1
    seg = make_segmentation(template)
    del template
    items = seg.PerFrameFunctionalGroupsSequence
    if len(items) != int(any_plane.sum()):
        return None
    index_of = {str(ds.SOPInstanceUID): k for k, ds in enumerate(source_images)}
    order = np.full(planes, -1, dtype=np.int64)  # plane -> its position in highdicom's plane order
    encoded: list[bytes] = []
    for j, item in enumerate(items):
        try:
            uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            values = [int(v) for v in item.FrameContentSequence[0].DimensionIndexValues]
            segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        except (AttributeError, IndexError, KeyError, TypeError):
            return None
        k = index_of.get(uid, -1)
        if k < 0 or order[k] >= 0 or values != [1, j + 1] or segment != 1:
            return None
        order[k] = j
        encoded.append(_encode_item(item))
    div_at = [_offset(b, DIMENSION_INDEX_VALUES) for b in encoded]
    rsn_at = [_offset(b, REFERENCED_SEGMENT_NUMBER) for b in encoded]
    if min(div_at) < 0 or min(rsn_at) < 0:
        return None

    frame_planes = [np.asarray(where[np.argsort(order[where], kind="stable")]) for where in present]
    number_of_frames = sum(len(f) for f in frame_planes)
    parts: list[bytes] = []
    for number, planes_of in enumerate(frame_planes, start=1):
        for k in planes_of:
            j = int(order[k])
            item = bytearray(encoded[j])
            struct.pack_into("<I", item, div_at[j], number)
            struct.pack_into("<H", item, rsn_at[j], number)
            parts.append(bytes(item))
    value = b"".join(parts)
    del parts

    frame_bytes = rows * columns // 8
    # Pixel Data lives in an unlinked temporary file, not in memory: pydicom writes a buffered value
    # chunk by chunk, so neither building nor saving holds the (often hundreds of MB) bits in RAM.
    pixels = tempfile.TemporaryFile(prefix="seg_pixels_")
    for s, planes_of in zip(structures, frame_planes, strict=True):
        k0, box_j, box_i = s.box
        for start in range(0, len(planes_of), CHUNK_PLANES):
            chunk = planes_of[start:start + CHUNK_PLANES]
            full = np.zeros((len(chunk), rows, columns), dtype=bool)
            full[:, box_j, box_i] = s.mask[chunk - k0.start]
            pixels.write(np.packbits(full.reshape(len(chunk), -1), axis=1, bitorder="little").tobytes())
    if pixels.tell() != number_of_frames * frame_bytes:
        raise OutputError(f"SEG BINARY: packed {pixels.tell()} bytes for {number_of_frames} frames of {frame_bytes}")
    if pixels.tell() % 2:
        pixels.write(b"\x00")  # even length (PS3.5 7.1.1)
    pixels.flush()
    pixels.seek(0)
    seg.NumberOfFrames = number_of_frames
    del seg[PFFG_TAG]
    seg.add(DataElement(0x7FE00010, "OB", pixels))  # PixelData, BitsAllocated 1
    correct_ambiguous_vr(seg, True)  # pydicom skips this when the encoding is the original one
    seg[PFFG_TAG] = RawDataElement(PFFG_TAG, "SQ", len(value), value, 0, False, True, True, False)
    # written as built: Explicit VR Little Endian, so pydicom copies the raw sequence verbatim
    seg.set_original_encoding(False, True, seg._character_set)
    return seg
