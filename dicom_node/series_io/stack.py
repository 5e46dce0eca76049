"""Checking that slices form one straight, evenly spaced stack, and finding its order and step.

Mixed orientations, sizes or pixel spacings, duplicate positions, gantry tilt (shear), uneven
spacing and missing slices are refused with a ``SeriesError`` whose message names the slices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from dicom_node import geometry
from dicom_node.dicom_header import header_text
from dicom_node.errors import SeriesError
from dicom_node.series_io.slices import Slice

log = logging.getLogger(__name__)

# A stack whose slice positions leave the normal by more than this is sheared (gantry tilt) ...
TILT_TOLERANCE_DEG = 0.1
# ... provided the shear moves the last slice sideways by more than rounding of the positions does.
LATERAL_TOLERANCE_MM = 0.05


def check_identity(headers: list[Dataset]) -> None:
    """One series, one frame of reference; empty UIDs (some exporters blank them) do not count."""
    for keyword, what in (("SeriesInstanceUID", "series"), ("FrameOfReferenceUID", "frames of reference")):
        values = {header_text(ds, keyword) for ds in headers} - {""}
        if len(values) > 1:
            raise SeriesError(f"instances from {len(values)} different {what} were given as one series")


def check_geometry(slices: list[Slice], headers: list[Dataset],
                   min_slices: int) -> tuple[list[Slice], geometry.Orientation, float]:
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


def _tilt_problem(ordered: list[Slice], orientation: geometry.Orientation, headers: list[Dataset]) -> str | None:
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


def _spacing_problems(ordered: list[Slice], spacing: geometry.StackSpacing) -> list[str]:
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


def _between(a: Slice, b: Slice) -> str:
    if a.frame is None and b.frame is None and a.instance_number is not None and b.instance_number is not None:
        return f"between instances {a.instance_number} and {b.instance_number}"
    return f"between {a.label} and {b.label}"


def _describe_steps(ordered: list[Slice], spacing: geometry.StackSpacing) -> str:
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


def _single_slice_step(s: Slice, ds: Dataset) -> float:
    """A one-slice volume still needs a positive third spacing: the nominal one from the header."""
    for value in (ds.get("SpacingBetweenSlices"), s.thickness):
        try:
            if value not in (None, "") and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            continue
    return 1.0


def _fmt_list(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
