"""Cheap readings of one DICOM header, shared by the listener and the volume loader.

The listener stores ``slice_position`` and ``expected_instance_count`` per instance for the
completion policy (``dicom_node.series``); the volume loader (``dicom_node.series_io``) reads the
same elements strictly when it builds the volume. This module imports only pydicom, numpy and the
node's geometry so that the receiving process never loads the imaging stack (SimpleITK, torch).
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

from dicom_node import geometry

# ImagesInAcquisition outside this range is a placeholder or a typo, not a count to wait for
_PLAUSIBLE_COUNT = range(2, 10001)


class Header(Protocol):
    """What these helpers read of a header: a pydicom ``Dataset``, or the listener's plain scan of
    the received bytes (``receive.header_scan.PlainHeader``), looked up by keyword."""

    def get(self, key: str, default: Any = None, /) -> Any: ...

    def __contains__(self, key: str, /) -> bool: ...


def header_text(ds: Header, keyword: str) -> str:
    """The element as stripped text; "" when absent or empty."""
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def header_int(ds: Header, keyword: str) -> int | None:
    """The element as an integer; None when absent, empty or not a number."""
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def number_of_frames(ds: Header) -> int:
    """NumberOfFrames, 1 for a single-frame image. Raises ValueError/TypeError on a malformed value."""
    value = ds.get("NumberOfFrames")
    return int(value) if value not in (None, "") else 1


def slice_position(ds: Header) -> float | None:
    """Projection of ImagePositionPatient on the slice normal (mm), or None when the header has no
    usable single-slice geometry (missing or invalid tags, or a multi-frame object). Never raises."""
    try:
        iop, ipp_value = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
        if number_of_frames(ds) > 1 or iop is None or ipp_value is None:
            return None
        orientation = _orientation(tuple(float(v) for v in iop))
        ipp = [float(v) for v in ipp_value]
        if orientation is None or len(ipp) != 3:
            return None
        return geometry.project(ipp, orientation.normal)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
        return None


@functools.lru_cache(maxsize=64)
def _orientation(iop: tuple[float, ...]) -> geometry.Orientation | None:
    # the receiver asks once per instance and a series repeats one orientation: computed once
    return geometry.orientation_from_iop(iop)


def expected_instance_count(ds: Header) -> int | None:
    """ImagesInAcquisition when present and plausible (2..10000) on a single-frame image, else None.

    It counts one acquisition; a series holding several acquisitions exceeds it, which the completion
    policy treats as "unknown" rather than "reached". Never raises.
    """
    try:
        if number_of_frames(ds) > 1:
            return None
    except (ValueError, TypeError, AttributeError):
        return None
    count = header_int(ds, "ImagesInAcquisition")
    return count if count is not None and count in _PLAUSIBLE_COUNT else None
