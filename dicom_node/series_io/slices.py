"""Headers -> 2D slices: the geometry and rescale of each single-frame instance or Enhanced CT frame.

Strict where the listener's summaries (``dicom_node.dicom_header``) are lenient: a slice that
cannot be placed in a volume is a ``SeriesError`` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicom_node.dicom_header import header_int, header_text, number_of_frames
from dicom_node.errors import SeriesError

# CT Image, Enhanced CT Image, Legacy Converted Enhanced CT Image Storage
CT_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1",
                            "1.2.840.10008.5.1.4.1.1.2.2"})


@dataclass(frozen=True)
class Slice:
    """Geometry and rescale of one 2D slice: a single-frame instance or one frame of a multi-frame."""

    file_index: int
    frame: int | None  # 1-based frame number within a multi-frame instance
    label: str  # how the message names it: "instance 12", "frame 2"
    instance_number: int | None
    iop: tuple[float, ...]
    ipp: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float
    thickness: float | None


def slices_of(ds: Dataset, index: int, name: str) -> list[Slice]:
    """The slices of the header ``ds`` of file number ``index`` (called ``name`` when it has no number)."""
    number = header_int(ds, "InstanceNumber")
    label = f"instance {number}" if number is not None else name
    sop_class = ds.get("SOPClassUID")
    if sop_class and str(sop_class) not in CT_SOP_CLASSES:
        # an empty SOP class (blanked by some exporters) is given the benefit of the doubt
        raise SeriesError(f"{label} is not a CT image ({getattr(sop_class, 'name', sop_class)})")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise SeriesError(f"{label} is not an image (no Rows/Columns)") from exc
    if is_multiframe(ds):
        return [_frame_slice(ds, index, f, number, label, rows, columns) for f in range(number_of_frames(ds))]
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if header_text(ds, keyword) == "":
            raise SeriesError(f"{label} has no {keyword}; cannot place it in a volume")
    slope, intercept = rescale(ds, 0)
    thickness = ds.get("SliceThickness")
    return [Slice(index, None, label, number,
                  _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", label),
                  _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", label),  # type: ignore[arg-type]
                  _floats(ds.PixelSpacing, 2, "PixelSpacing", label),  # type: ignore[arg-type]
                  rows, columns, slope, intercept,
                  float(thickness) if thickness not in (None, "") else None)]


def is_multiframe(ds: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def rescale(ds: Dataset, frame: int) -> tuple[float, float]:
    """(slope, intercept) of a frame (0-based): the Enhanced CT's functional group, else the top level."""
    item = _group_item(ds, frame, "PixelValueTransformationSequence") if is_multiframe(ds) else None
    source = item if item is not None else ds
    slope = source.get("RescaleSlope")
    intercept = source.get("RescaleIntercept")
    return (float(slope) if slope not in (None, "") else 1.0,
            float(intercept) if intercept not in (None, "") else 0.0)


def _frame_slice(ds: Dataset, index: int, frame: int, number: int | None, label: str,
                 rows: int, columns: int) -> Slice:
    """Geometry of one frame of an Enhanced CT from its functional groups (per-frame or shared)."""
    frame_label = f"frame {frame + 1} of {label}"
    items = {}
    for keyword, inner in (("PlaneOrientationSequence", "ImageOrientationPatient"),
                           ("PlanePositionSequence", "ImagePositionPatient"),
                           ("PixelMeasuresSequence", "PixelSpacing")):
        item = _group_item(ds, frame, keyword)
        if item is None or header_text(item, inner) == "":
            raise SeriesError(f"{frame_label} has no {inner} in its functional groups")
        items[inner] = item
    slope, intercept = rescale(ds, frame)
    thickness = items["PixelSpacing"].get("SliceThickness")
    return Slice(index, frame + 1, frame_label, number,
                 _floats(items["ImageOrientationPatient"].ImageOrientationPatient, 6, "ImageOrientationPatient",
                         frame_label),
                 _floats(items["ImagePositionPatient"].ImagePositionPatient, 3, "ImagePositionPatient",
                         frame_label),  # type: ignore[arg-type]
                 _floats(items["PixelSpacing"].PixelSpacing, 2, "PixelSpacing", frame_label),  # type: ignore[arg-type]
                 rows, columns, slope, intercept,
                 float(thickness) if thickness not in (None, "") else None)


def _group_item(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """First item of a functional group macro for a frame: per-frame wins over shared."""
    for container, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(container)
        if groups is not None and len(groups) > index:
            items = groups[index].get(keyword)
            if items is not None and len(items) > 0:
                return items[0]  # type: ignore[no-any-return]
    return None


def _floats(value: object, count: int, what: str, label: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise SeriesError(f"{label}: {what} is not numeric ({value!r})") from exc
    if len(numbers) != count:
        raise SeriesError(f"{label}: {what} has {len(numbers)} values, expected {count}")
    return numbers
