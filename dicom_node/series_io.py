"""Read, sort and check a CT series -> a correctly oriented volume.

``load_series(paths) -> CtSeries`` or ``SeriesError`` whose message is the reason stored on the job
and shown to a physicist. ``slice_position(ds)`` and ``expected_instance_count(ds)`` are the cheap
per-instance summaries the receiver stores for the completion policy (``dicom_node.series``).

Ordering and geometry convention (the same as SimpleITK/GDCM's series reader):

- slices (single-frame instances, or frames of an Enhanced CT) are sorted by ascending projection of
  ``ImagePositionPatient`` on the slice normal ``n = row cosine x column cosine``;
- ``volume.array[k]`` is the k-th slice in that order and ``datasets[k]`` its header;
- ``origin`` is the ImagePositionPatient of slice 0, ``spacing`` is (column spacing =
  PixelSpacing[1], row spacing = PixelSpacing[0], mean step along n), and ``direction`` is the
  row-major 3x3 matrix whose columns are the row cosine, the column cosine and n. The step direction
  is therefore always +n and the matrix is right-handed; a feet-first series simply has n pointing
  towards the feet, and its slice 0 is the most cranial one.

Reading is tolerant (``force=True``, file meta repaired where the transfer syntax is missing);
checking is strict: mixed orientations, sizes or pixel spacings, duplicate positions, gantry tilt
(shear), uneven spacing and missing slices are refused with a reason.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node import geometry
from dicom_node.errors import SeriesError
from segmenter.core.volume import Volume

log = logging.getLogger(__name__)

DEFAULT_MIN_SLICES = 3
# A stack whose slice positions leave the normal by more than this is sheared (gantry tilt) ...
TILT_TOLERANCE_DEG = 0.1
# ... provided the shear moves the last slice sideways by more than rounding of the positions does.
LATERAL_TOLERANCE_MM = 0.05
# CT Image, Enhanced CT Image, Legacy Converted Enhanced CT Image Storage
CT_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1",
                            "1.2.840.10008.5.1.4.1.1.2.2"})
# pydicom raises many kinds when a header or pixel stream is malformed; these are the ones seen.
_PYDICOM_ERRORS = (InvalidDicomError, OSError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                   EOFError, RuntimeError, NotImplementedError, OverflowError)


@dataclass(frozen=True)
class CtSeries:
    """A checked CT series: the volume in HU and the source headers in the volume's slice order.

    ``datasets[k]`` is the instance whose pixels are ``volume.array[k]`` (headers only, no pixel
    data kept), so writers can reference the exact source image of every slice. For an Enhanced
    (multi-frame) CT the same header appears once per frame and ``frame_numbers[k]`` is the 1-based
    frame of slice k; it is None for single-frame instances (and the tuple may be empty when the
    series was built elsewhere).
    """

    volume: Volume
    datasets: tuple[Dataset, ...]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    frame_numbers: tuple[int | None, ...] = ()
    # False when read with ``load_series(..., pixels=False)``: ``volume`` then has the series' geometry
    # but its array is a read-only zero placeholder (no memory), fit only for writers that need the grid
    has_pixels: bool = True


@dataclass(frozen=True)
class _Slice:
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


# --------------------------------------------------------------------------- receive-time summaries


def slice_position(ds: Dataset) -> float | None:
    """Projection of ImagePositionPatient on the slice normal (mm), or None when the header has no
    usable single-slice geometry (missing or invalid tags, or a multi-frame object). Never raises."""
    try:
        if _number_of_frames(ds) > 1 or "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            return None
        orientation = _orientation(tuple(float(v) for v in ds.ImageOrientationPatient))
        ipp = [float(v) for v in ds.ImagePositionPatient]
        if orientation is None or len(ipp) != 3:
            return None
        return geometry.project(ipp, orientation.normal)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
        return None


@functools.lru_cache(maxsize=64)
def _orientation(iop: tuple[float, ...]) -> geometry.Orientation | None:
    # the receiver asks once per instance and a series repeats one orientation: computed once
    return geometry.orientation_from_iop(iop)


def expected_instance_count(ds: Dataset) -> int | None:
    """ImagesInAcquisition when present and plausible (2..10000) on a single-frame image, else None.

    It counts one acquisition; a series holding several acquisitions exceeds it, which the completion
    policy treats as "unknown" rather than "reached".
    """
    try:
        if _number_of_frames(ds) > 1:
            return None
        value = ds.get("ImagesInAcquisition")
        count = int(value) if value not in (None, "") else None
    except (ValueError, TypeError, AttributeError):
        return None
    return count if count is not None and 1 < count <= 10000 else None


# --------------------------------------------------------------------------------------- loading


def load_series(paths: Sequence[Path], *, min_slices: int = DEFAULT_MIN_SLICES, pixels: bool = True) -> CtSeries:
    """Read the instances of one CT series, check them and build the HU volume.

    Raises SeriesError with a reason meant for a physicist when the files cannot be read, do not form
    one straight evenly spaced stack of at least ``min_slices`` slices, or pixels cannot be decoded.
    ``pixels=False`` reads and checks the headers only (the files are read up to their pixel data):
    for writing outputs from a label map made elsewhere, where only the grid and the headers count;
    the result has ``has_pixels`` False and a zero placeholder array.
    """
    if min_slices < 1:
        raise ValueError(f"min_slices must be at least 1, got {min_slices}")
    if not paths:
        raise SeriesError("no instances given")
    headers = [read_header(Path(p)) for p in paths]
    _check_identity(headers)
    slices = [s for index, ds in enumerate(headers) for s in _slices_of(ds, index, Path(paths[index]).name)]
    ordered, orientation, step = _check_geometry(slices, headers, min_slices)
    first = ordered[0]
    if pixels:
        array = _decode_stack(paths, headers, ordered)
    else:
        array = np.broadcast_to(np.zeros((), dtype=np.int16), (len(ordered), first.rows, first.columns))
    volume = Volume(array, (first.pixel_spacing[1], first.pixel_spacing[0], step), first.ipp,
                    orientation.direction())
    log.info("loaded series: %d slices of %dx%d, step %s mm, %s", len(ordered), first.rows, first.columns,
             geometry.format_mm(step), array.dtype if pixels else "headers only")
    top = headers[ordered[0].file_index]
    return CtSeries(
        volume=volume,
        datasets=tuple(headers[s.file_index] for s in ordered),
        study_uid=_text(top, "StudyInstanceUID"),
        series_uid=_text(top, "SeriesInstanceUID"),
        frame_of_reference_uid=_text(top, "FrameOfReferenceUID"),
        frame_numbers=tuple(s.frame for s in ordered),
        has_pixels=pixels,
    )


def read_header(path: Path) -> Dataset:
    """The header of one file without its pixel data; tolerant of missing preamble and file meta.

    Empty SOP Class/Instance UIDs in the dataset are taken from the file meta, where exporters that
    blank the dataset (``ct/totalseg_example_dicom``) still keep them.
    """
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except _PYDICOM_ERRORS as exc:
        raise SeriesError(f"cannot read {path.name}: {exc}") from exc
    _repair_meta(ds)
    meta = ds.file_meta
    for keyword, meta_keyword in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                                  ("SOPClassUID", "MediaStorageSOPClassUID")):
        if not _text(ds, keyword) and str(meta.get(meta_keyword, "") or "").strip():
            setattr(ds, keyword, str(meta.get(meta_keyword)).strip())
            log.debug("%s of %s taken from the file meta", keyword, path.name)
    return ds


def decode_hu(ds: Dataset) -> np.ndarray:
    """Pixel data of a full dataset as (frames, rows, columns) float32 after the modality rescale.

    Uses the top-level RescaleSlope/Intercept, or the shared/per-frame Pixel Value Transformation of
    an Enhanced CT. Raises SeriesError when the pixels cannot be decoded.
    """
    _repair_meta(ds)
    raw = _pixels(ds, "the image")
    out = np.empty(raw.shape, dtype=np.float32)
    for f in range(raw.shape[0]):
        slope, intercept = _rescale(ds, f)
        out[f] = raw[f].astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return out


# ------------------------------------------------------------------------------------ internals


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _number_of_frames(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames")
    return int(value) if value not in (None, "") else 1


def _repair_meta(ds: Dataset) -> None:
    """Give a dataset read without a transfer syntax the one it was actually read with, so pydicom
    can decode its (necessarily native) pixel data."""
    meta = ds.file_meta
    if "TransferSyntaxUID" in meta and str(meta.TransferSyntaxUID).strip():
        return
    implicit, little = ds.original_encoding
    if little:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def _check_identity(headers: list[Dataset]) -> None:
    """One series, one frame of reference; empty UIDs (some exporters blank them) do not count."""
    for keyword, what in (("SeriesInstanceUID", "series"), ("FrameOfReferenceUID", "frames of reference")):
        values = {_text(ds, keyword) for ds in headers} - {""}
        if len(values) > 1:
            raise SeriesError(f"instances from {len(values)} different {what} were given as one series")


def _floats(value: object, count: int, what: str, label: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise SeriesError(f"{label}: {what} is not numeric ({value!r})") from exc
    if len(numbers) != count:
        raise SeriesError(f"{label}: {what} has {len(numbers)} values, expected {count}")
    return numbers


def _group_item(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """First item of a functional group macro for a frame: per-frame wins over shared."""
    for container, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(container)
        if groups is not None and len(groups) > index:
            items = groups[index].get(keyword)
            if items is not None and len(items) > 0:
                return items[0]  # type: ignore[no-any-return]
    return None


def _rescale(ds: Dataset, frame: int) -> tuple[float, float]:
    item = _group_item(ds, frame, "PixelValueTransformationSequence") if _is_multiframe(ds) else None
    source = item if item is not None else ds
    slope = source.get("RescaleSlope")
    intercept = source.get("RescaleIntercept")
    return (float(slope) if slope not in (None, "") else 1.0,
            float(intercept) if intercept not in (None, "") else 0.0)


def _is_multiframe(ds: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def _instance_number(ds: Dataset) -> int | None:
    try:
        value = ds.get("InstanceNumber")
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _slices_of(ds: Dataset, index: int, name: str) -> list[_Slice]:
    number = _instance_number(ds)
    label = f"instance {number}" if number is not None else name
    sop_class = ds.get("SOPClassUID")
    if sop_class and str(sop_class) not in CT_SOP_CLASSES:
        # an empty SOP class (blanked by some exporters) is given the benefit of the doubt
        raise SeriesError(f"{label} is not a CT image ({getattr(sop_class, 'name', sop_class)})")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise SeriesError(f"{label} is not an image (no Rows/Columns)") from exc
    if _is_multiframe(ds):
        return [_frame_slice(ds, index, f, number, label, rows, columns) for f in range(_number_of_frames(ds))]
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if _text(ds, keyword) == "":
            raise SeriesError(f"{label} has no {keyword}; cannot place it in a volume")
    slope, intercept = _rescale(ds, 0)
    thickness = ds.get("SliceThickness")
    return [_Slice(index, None, label, number,
                   _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", label),
                   _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", label),  # type: ignore[arg-type]
                   _floats(ds.PixelSpacing, 2, "PixelSpacing", label),  # type: ignore[arg-type]
                   rows, columns, slope, intercept,
                   float(thickness) if thickness not in (None, "") else None)]


def _frame_slice(ds: Dataset, index: int, frame: int, number: int | None, label: str,
                 rows: int, columns: int) -> _Slice:
    """Geometry of one frame of an Enhanced CT from its functional groups (per-frame or shared)."""
    frame_label = f"frame {frame + 1} of {label}"
    items = {}
    for keyword, inner in (("PlaneOrientationSequence", "ImageOrientationPatient"),
                           ("PlanePositionSequence", "ImagePositionPatient"),
                           ("PixelMeasuresSequence", "PixelSpacing")):
        item = _group_item(ds, frame, keyword)
        if item is None or _text(item, inner) == "":
            raise SeriesError(f"{frame_label} has no {inner} in its functional groups")
        items[inner] = item
    slope, intercept = _rescale(ds, frame)
    thickness = items["PixelSpacing"].get("SliceThickness")
    return _Slice(index, frame + 1, frame_label, number,
                  _floats(items["ImageOrientationPatient"].ImageOrientationPatient, 6, "ImageOrientationPatient",
                          frame_label),
                  _floats(items["ImagePositionPatient"].ImagePositionPatient, 3, "ImagePositionPatient",
                          frame_label),  # type: ignore[arg-type]
                  _floats(items["PixelSpacing"].PixelSpacing, 2, "PixelSpacing", frame_label),  # type: ignore[arg-type]
                  rows, columns, slope, intercept,
                  float(thickness) if thickness not in (None, "") else None)


def _check_geometry(slices: list[_Slice], headers: list[Dataset],
                    min_slices: int) -> tuple[list[_Slice], geometry.Orientation, float]:
    """Sort along the normal and refuse anything that is not one straight, evenly spaced stack."""
    first = slices[0]
    orientation = geometry.orientation_from_iop(first.iop)
    if orientation is None:
        raise SeriesError(f"{first.label}: ImageOrientationPatient {list(first.iop)} is not two orthogonal "
                          "unit vectors")
    for s in slices[1:]:
        if not geometry.same_orientation(s.iop, first.iop):
            raise SeriesError(f"mixed orientations: {s.label} has ImageOrientationPatient "
                              f"{_fmt_list(s.iop)} where {first.label} has {_fmt_list(first.iop)}")
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise SeriesError(f"mixed image sizes: {s.label} is {s.rows}×{s.columns} where {first.label} is "
                              f"{first.rows}×{first.columns} (rows×columns)")
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-3, atol=1e-4):
            raise SeriesError(f"mixed pixel spacing: {s.label} has {_fmt_list(s.pixel_spacing)} mm where "
                              f"{first.label} has {_fmt_list(first.pixel_spacing)} mm")
    if min(first.pixel_spacing) <= 0:
        raise SeriesError(f"{first.label}: PixelSpacing {_fmt_list(first.pixel_spacing)} is not positive")
    if len(slices) < min_slices:
        raise SeriesError(f"too few slices for a volume: {len(slices)} (need ≥ {min_slices})")

    # stable sort; ties (duplicates, refused below) keep a reproducible order by instance number
    ordered = sorted(slices, key=lambda s: (geometry.project(s.ipp, orientation.normal),
                                            s.instance_number if s.instance_number is not None else 0))
    positions = [geometry.project(s.ipp, orientation.normal) for s in ordered]
    if len(ordered) == 1:
        return ordered, orientation, _single_slice_step(ordered[0], headers[ordered[0].file_index])
    spacing = geometry.analyse_spacing(positions)
    if len(spacing.duplicates) == len(spacing.steps):
        unit = "frames" if ordered[0].frame is not None else "instances"
        raise SeriesError(f"all {len(ordered)} {unit} share one position; not a volume")
    if spacing.duplicates:
        k = spacing.duplicates[0]
        more = f" ({len(spacing.duplicates)} such pairs)" if len(spacing.duplicates) > 1 else ""
        raise SeriesError(f"duplicate slice position: {ordered[k].label} and {ordered[k + 1].label} are both at "
                          f"{geometry.format_mm(positions[k])} mm along the slice normal{more}")

    problems = []
    tilt = _tilt_problem(ordered, orientation, headers)
    if tilt:
        problems.append(tilt)
    problems.extend(_spacing_problems(ordered, spacing))
    if problems:
        raise SeriesError("; ".join(problems))
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    return ordered, orientation, step


def _tilt_problem(ordered: list[_Slice], orientation: geometry.Orientation, headers: list[Dataset]) -> str | None:
    ipps = [s.ipp for s in ordered]
    offsets = geometry.in_plane_offsets(ipps, orientation.normal)
    angle = geometry.shear_degrees(ipps[0], ipps[-1], orientation.normal)
    gantry = _gantry_tilt(headers[ordered[0].file_index])
    if angle > TILT_TOLERANCE_DEG and offsets[-1] > LATERAL_TOLERANCE_MM:
        tag = f" (GantryDetectorTilt {gantry:g}°)" if gantry else ""
        return f"gantry tilt: slices are sheared by {angle:.1f}° relative to the slice normal{tag}"
    # not sheared as a whole, but single slices may still sit off the line (half a pixel matters)
    limit = max(LATERAL_TOLERANCE_MM, 0.5 * min(ordered[0].pixel_spacing))
    worst = int(np.argmax(offsets))
    if offsets[worst] > limit:
        return (f"slices are not on one line: {ordered[worst].label} is shifted in-plane by "
                f"{geometry.format_mm(float(offsets[worst]))} mm")
    if gantry:
        # the tag alone is harmless when the positions describe an orthogonal stack (resampled)
        log.info("GantryDetectorTilt %g° but the slice positions form an orthogonal stack", gantry)
    return None


def _spacing_problems(ordered: list[_Slice], spacing: geometry.StackSpacing) -> list[str]:
    usual = geometry.format_mm(spacing.usual_step)
    missing: list[str] = []
    uneven = spacing.uneven
    for gap in spacing.gaps:
        a, b = ordered[gap.after], ordered[gap.after + 1]
        if a.instance_number is not None and b.instance_number is not None and \
                abs(a.instance_number - b.instance_number) == 1:
            # consecutive instance numbers across a wide step: the scanner meant it, nothing is missing
            uneven = True
            continue
        missing.append(f"gap of {geometry.format_mm(gap.size_mm)} mm where {usual} mm expected {_between(a, b)}")
    problems = []
    if len(missing) == 1:
        problems.append(f"missing slice: {missing[0]}")
    elif missing:
        problems.append(f"missing slices ({len(missing)} gaps): {missing[0]} (and {len(missing) - 1} more)")
    if uneven:
        problems.append("uneven slice spacing: " + _describe_steps(ordered, spacing))
    return problems


def _between(a: _Slice, b: _Slice) -> str:
    if a.frame is None and b.frame is None and a.instance_number is not None and b.instance_number is not None:
        return f"between instances {a.instance_number} and {b.instance_number}"
    return f"between {a.label} and {b.label}"


def _describe_steps(ordered: list[_Slice], spacing: geometry.StackSpacing) -> str:
    steps = spacing.steps
    if len(steps) <= 8:
        return "steps " + ", ".join(geometry.format_mm(s) for s in steps) + " mm"
    tolerance = geometry.spacing_tolerance(spacing.usual_step)
    odd = [k for k, s in enumerate(steps) if abs(s - spacing.usual_step) > tolerance]
    k = odd[0]
    more = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
    return (f"usual step {geometry.format_mm(spacing.usual_step)} mm, but {geometry.format_mm(steps[k])} mm "
            f"{_between(ordered[k], ordered[k + 1])}{more}")


def _gantry_tilt(ds: Dataset) -> float:
    try:
        value = ds.get("GantryDetectorTilt")
        return float(value) if value not in (None, "") else 0.0
    except (TypeError, ValueError):
        return 0.0


def _single_slice_step(s: _Slice, ds: Dataset) -> float:
    """A one-slice volume still needs a positive third spacing: the nominal one from the header."""
    for value in (ds.get("SpacingBetweenSlices"), s.thickness):
        try:
            if value not in (None, "") and float(value) > 0:  # type: ignore[arg-type]
                return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
    return 1.0


def _pixels(ds: Dataset, label: str) -> np.ndarray:
    """Decoded stored values as (frames, rows, columns)."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise SeriesError(f"{label} is not a greyscale image (SamplesPerPixel {ds.SamplesPerPixel})")
    try:
        raw = ds.pixel_array
    except _PYDICOM_ERRORS as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        name = syntax.name if syntax else "unknown transfer syntax"
        raise SeriesError(f"pixel data cannot be decoded: {label} ({name}): {exc}") from exc
    return raw[np.newaxis] if raw.ndim == 2 else raw


def _decode_stack(paths: Sequence[Path], headers: list[Dataset], ordered: list[_Slice]) -> np.ndarray:
    """Decode each file once and put its frames in their sorted slots, in HU.

    int16 while every slope/intercept is integral and the values fit (exact and half the memory of
    float32); the buffer is promoted to float32 the first time they do not.
    """
    first = ordered[0]
    array: np.ndarray = np.empty((len(ordered), first.rows, first.columns), dtype=np.int16)
    slots: dict[int, list[tuple[int, _Slice]]] = {}
    for k, s in enumerate(ordered):
        slots.setdefault(s.file_index, []).append((k, s))
    for file_index, members in slots.items():
        path = Path(paths[file_index])
        label = members[0][1].label.split(" of ")[-1]
        try:
            ds = pydicom.dcmread(path, force=True)
        except _PYDICOM_ERRORS as exc:
            raise SeriesError(f"cannot read {path.name}: {exc}") from exc
        _repair_meta(ds)
        raw = _pixels(ds, label)
        if raw.shape[1:] != (first.rows, first.columns):
            raise SeriesError(f"pixel data cannot be decoded: {label} decodes to {raw.shape[1]}×{raw.shape[2]} "
                              f"pixels but declares {first.rows}×{first.columns}")
        for k, s in members:
            index = (s.frame or 1) - 1
            if index >= raw.shape[0]:
                raise SeriesError(f"pixel data cannot be decoded: {label} holds {raw.shape[0]} frames, "
                                  f"{s.label} is missing")
            exact = float(s.slope).is_integer() and float(s.intercept).is_integer()
            if array.dtype == np.int16 and exact:
                values = raw[index].astype(np.int32) * int(s.slope) + int(s.intercept)
                if values.min() >= -32768 and values.max() <= 32767:
                    array[k] = values
                    continue
            if array.dtype != np.float32:
                log.debug("HU not exact in int16 from %s on: promoting the volume to float32", s.label)
                array = array.astype(np.float32)
            array[k] = raw[index].astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
        del ds  # the pixel bytes of one file at a time, never of the whole series
    return array


def _fmt_list(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"