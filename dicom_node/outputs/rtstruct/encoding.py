"""The bulk of an RTSTRUCT, its contours, encoded straight to Explicit VR Little Endian bytes.

A structure set of 20 organs has thousands of contour items and hundreds of thousands of
coordinates. Building one pydicom Dataset per contour, and one Python string per coordinate, cost
more than tracing them; so coordinates are formatted as Decimal Strings with array operations
(:func:`format_ds_values`) and each ROI's ContourSequence is written as one encoded byte string
(:func:`contour_sequence`), which pydicom stores as a raw element and writes as it is.

Decimal Strings: fixed point with 4 decimals (0.1 micrometre), trailing zeros and a trailing point
stripped, "-0" written "0": at most 14 characters for the coordinates allowed here (|v| < 1e7 mm),
within the 16 of DS. The same text as ``common.format_ds`` (which rounds the exact binary value);
the few values whose scaled value is within 1e-6 of a rounding tie are formatted by Python to agree
exactly. A ContourData longer than the 0xFFFE bytes an explicit-VR DS can hold falls back to fewer
decimals, else is an error.
"""

from __future__ import annotations

import logging
import struct

import numpy as np

from dicom_node.errors import OutputError
from dicom_node.outputs.common import format_ds

log = logging.getLogger(__name__)

# An explicit-VR DS element holds at most 0xFFFE bytes; a longer ContourData would turn into UN.
MAX_VALUE_BYTES = 0xFFFE
# Coordinates at or beyond this (mm, 10 km) take the per-value path; below it the whole part has at
# most 8 digits even after rounding, two 4-digit groups.
MAX_FAST_ABS = 1e7
_DECIMALS = (4, 2, 1)
_POWERS = 10 ** np.arange(1, 8, dtype=np.int64)  # 10 .. 1e7: digits of a whole part below 1e8
_FOUR_DIGITS = np.array([list(f"{n:04d}".encode()) for n in range(10_000)], dtype=np.uint8)
# decimals left of 4 after stripping trailing zeros, by the 4-digit fraction
_DECIMALS_LEFT = np.array([len(f"{n:04d}".rstrip("0")) for n in range(10_000)], dtype=np.int64)

CONTOUR_IMAGE_SEQUENCE = 0x30060016
CONTOUR_GEOMETRIC_TYPE = 0x30060042
NUMBER_OF_CONTOUR_POINTS = 0x30060046
CONTOUR_NUMBER = 0x30060048
CONTOUR_DATA = 0x30060050
REFERENCED_SOP_CLASS_UID = 0x00081150
REFERENCED_SOP_INSTANCE_UID = 0x00081155
REFERENCED_FRAME_NUMBER = 0x00081160


def format_ds_values(values: np.ndarray) -> tuple[bytes, np.ndarray] | None:
    """All values as DS text, each followed by a backslash, in one byte string, and the end offset
    of each value (after its backslash). None when a value is not finite or too large for the
    fixed-point form (callers then use :func:`~dicom_node.outputs.common.format_ds`)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return b"", np.zeros(0, dtype=np.int64)
    largest = float(np.max(np.abs(v)))
    if not (np.isfinite(largest) and largest < MAX_FAST_ABS):
        return None
    scaled = v * 1e4
    q = np.rint(scaled).astype(np.int64)
    # within float error of a tie, the product may round the other way than the exact value does
    tie = np.flatnonzero(np.abs(np.abs(scaled - q) - 0.5) < 1e-6 + 4e-16 * largest * 1e4)
    for n in tie.tolist():
        q[n] = int(f"{v[n]:.4f}".replace(".", ""))
    whole, frac = np.divmod(np.abs(q), 10_000)
    high, low = np.divmod(whole, 10_000)
    digits = np.searchsorted(_POWERS, whole, side="right") + 1  # 1 .. 8
    width = int(digits.max())
    decimals = _DECIMALS_LEFT[frac]
    # one row per value: sign, `width` integer digits (right-aligned), point, 4 decimals, backslash
    chars = np.empty((v.size, width + 7), dtype=np.uint8)
    chars[:, 0] = ord("-")
    integer = np.concatenate([_FOUR_DIGITS[high], _FOUR_DIGITS[low]], axis=1)
    chars[:, 1:width + 1] = integer[:, 8 - width:]
    chars[:, width + 1] = ord(".")
    chars[:, width + 2:width + 6] = _FOUR_DIGITS[frac]
    chars[:, width + 6] = ord("\\")
    keep = np.empty(chars.shape, dtype=bool)
    keep[:, 0] = q < 0
    keep[:, 1:width + 1] = np.arange(width)[None, :] >= (width - digits)[:, None]
    keep[:, width + 1] = decimals > 0
    keep[:, width + 2:width + 6] = np.arange(4)[None, :] < decimals[:, None]
    keep[:, width + 6] = True
    lengths = (q < 0).astype(np.int64) + digits + (decimals > 0) + decimals + 1
    return chars[keep].tobytes(), np.cumsum(lengths)


def contour_data(points: np.ndarray) -> list[str]:
    """ContourData values (x1, y1, z1, x2, ...) as DS strings of at most 16 characters.

    Four decimals unless the element would exceed the 64 KiB explicit-VR value limit, then fewer.
    """
    flat = np.asarray(points, dtype=np.float64).ravel()
    fast = format_ds_values(flat)
    if fast is not None and (flat.size == 0 or int(fast[1][-1]) - 1 <= MAX_VALUE_BYTES):
        return fast[0].decode("ascii").split("\\")[:-1]
    return _contour_data_slow(flat)


def _contour_data_slow(flat: np.ndarray) -> list[str]:
    for decimals in _DECIMALS:
        values = [format_ds(v, decimals) for v in flat]
        if sum(len(v) for v in values) + len(values) - 1 <= MAX_VALUE_BYTES:
            if decimals != _DECIMALS[0]:
                log.debug("ContourData of %d points written with %d decimals (64 KiB limit)", len(flat) // 3, decimals)
            return values
    raise OutputError(f"ContourData: a contour of {len(flat) // 3} points does not fit the 64 KiB DS value "
                      f"limit even with {_DECIMALS[-1]} decimal")


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """A short-form explicit VR little endian element (2-byte length)."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _sequence(tag: int, items: bytes) -> bytes:
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, len(items)) + items


def _item(body: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def image_reference(sop_class_uid: str, sop_instance_uid: str, frame_number: int | None = None) -> bytes:
    """A Contour Image Sequence element with one item referencing one image, or one frame of a
    multi-frame image (Referenced Frame Number)."""
    body = (_element(REFERENCED_SOP_CLASS_UID, b"UI", _even(sop_class_uid.encode("ascii"), b"\0"))
            + _element(REFERENCED_SOP_INSTANCE_UID, b"UI", _even(sop_instance_uid.encode("ascii"), b"\0")))
    if frame_number is not None:
        body += _element(REFERENCED_FRAME_NUMBER, b"IS", _even(str(int(frame_number)).encode("ascii"), b" "))
    return _sequence(CONTOUR_IMAGE_SEQUENCE, _item(body))


_CLOSED_PLANAR = _element(CONTOUR_GEOMETRIC_TYPE, b"CS", b"CLOSED_PLANAR ")


def contour_sequence(points_xyz: np.ndarray, starts: np.ndarray, references: list[bytes]) -> bytes:
    """The items of a ContourSequence: polygon n is ``points_xyz[starts[n]:starts[n + 1]]`` (patient
    mm), CLOSED_PLANAR, numbered from 1, referencing its image with ``references[n]``
    (:func:`image_reference`)."""
    count = len(starts) - 1
    if len(references) != count:
        raise OutputError(f"ContourSequence: {len(references)} image references for {count} contours")
    formatted = format_ds_values(points_xyz)
    items = []
    for n in range(count):
        first, stop = int(starts[n]), int(starts[n + 1])
        if stop - first < 3:
            raise OutputError(f"ContourSequence: contour {n + 1} has {stop - first} points, CLOSED_PLANAR needs 3")
        data = None
        if formatted is not None:
            begin = int(formatted[1][3 * first - 1]) if first else 0
            end = int(formatted[1][3 * stop - 1]) - 1  # without the last value's backslash
            if end - begin <= MAX_VALUE_BYTES:
                data = formatted[0][begin:end]
        if data is None:
            data = "\\".join(_contour_data_slow(np.asarray(points_xyz[first:stop]).ravel())).encode("ascii")
        body = b"".join((references[n], _CLOSED_PLANAR,
                         _element(NUMBER_OF_CONTOUR_POINTS, b"IS", _even(str(stop - first).encode(), b" ")),
                         _element(CONTOUR_NUMBER, b"IS", _even(str(n + 1).encode(), b" ")),
                         _element(CONTOUR_DATA, b"DS", _even(data, b" "))))
        items.append(_item(body))
    return b"".join(items)
