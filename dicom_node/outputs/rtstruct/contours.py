"""Planar contours from voxel masks, and back: the geometry behind the RTSTRUCT writer.

Representation. On each slice a mask is traced with marching squares at level 0.5 on the mask padded
by one background pixel (:mod:`~dicom_node.outputs.rtstruct.tracing`, all slices of a structure at once).
Every boundary between inside and outside pixels becomes one closed polygon: outer boundaries and
hole boundaries alike, as separate contours. The polygons pass half-way between the centres of
inside and outside pixels, so **even-odd filling of all contours of a slice at the pixel centres
reproduces the mask exactly** (before decimation): a hole contour inside an outer contour subtracts,
an island inside a hole adds again. This is the rule plastimatch and most planning systems apply to
several contours of one ROI on one plane.

Connectivity. Inside pixels are 4-connected: two pixels touching only at a corner give two
contours, never one polygon pinched through a point.

Decimation (:mod:`~dicom_node.outputs.rtstruct.decimation`). Exactly collinear vertices (straight runs) are
removed losslessly; then Douglas-Peucker with a tolerance in millimetres (default 0.5 mm) removes
vertices whose removal moves the boundary by at most that distance. By default (``preserve_raster``)
a decimated edge must also pass between the inside and outside pixel centres of every vertex it
replaces, and the result is checked exactly against the mask, so the RTSTRUCT re-rasterises to the
very mask the SEG holds; a slice that fails the check is decimated within the safe tolerance below.
A contour that decimation would reduce below 3 points is kept undecimated, so small islands are
never lost to it.

Why 0.3 pixel needs no check: every pixel centre is at least 0.354 pixel from the traced boundary.
A Douglas-Peucker segment replaces a chain whose vertices, hence the whole chain, lie in the convex
capsule of radius ``t`` around the segment; a pixel centre whose fill changes (or that the segment
touches) lies in the region between chain and segment, inside the capsule, and a ray from it away
from the segment meets the chain within ``t``. With ``t`` <= 0.3 pixel (the tolerance in mm over the
smaller pixel spacing) no such centre exists, and every centre stays 0.05 pixel from the segments.

Island threshold. ``min_island_pixels`` (default 1: keep everything) drops 4-connected islands smaller
than that many pixels on a slice before tracing. Holes are always kept.

Coordinates. Polygons are (row, column) continuous pixel indices of the slice; ``to_patient`` maps them
onto the slice's plane in patient coordinates (DICOM LPS) with the image's own position, orientation
and spacing, so any orientation (feet first, prone, flipped axes) is handled the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dicom_node.errors import OutputError
from dicom_node.outputs.rtstruct import decimation
from dicom_node.outputs.rtstruct.tracing import TracedPolygons, concatenate, trace_stack

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_MM = 0.5
DEFAULT_MIN_ISLAND_PIXELS = 1
# Traced edges join mid-points of neighbouring pixel centres, so every pixel centre is at least
# 0.5/sqrt(2) = 0.354 pixel from the traced boundary; a decimation within 0.3 pixel keeps the fill.
SAFE_TOLERANCE_PIXELS = 0.3
# 4-connectivity within a slice, none across slices: islands are counted per slice.
_IN_PLANE_CROSS = np.array([np.zeros((3, 3)), [[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.zeros((3, 3))], dtype=bool)


@dataclass(frozen=True)
class ContourOptions:
    """How masks become contours. See the module docstring for the rules."""

    tolerance_mm: float = DEFAULT_TOLERANCE_MM
    min_island_pixels: int = DEFAULT_MIN_ISLAND_PIXELS
    preserve_raster: bool = True

    def __post_init__(self) -> None:
        if not np.isfinite(self.tolerance_mm) or self.tolerance_mm < 0:
            raise OutputError(f"ContourOptions.tolerance_mm: must be a finite number >= 0, got {self.tolerance_mm}")
        if self.min_island_pixels < 1:
            raise OutputError(f"ContourOptions.min_island_pixels: must be >= 1, got {self.min_island_pixels}")


def remove_small_islands(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """``mask`` (2D, or a stack of slices) without the 4-connected in-plane components smaller than
    ``min_pixels`` (1 keeps everything)."""
    if min_pixels <= 1:
        return mask
    structure = _IN_PLANE_CROSS if mask.ndim == 3 else _IN_PLANE_CROSS[1]
    components, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return mask
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    kept: np.ndarray = keep[components]
    return kept


def stack_contours(mask: np.ndarray, spacing_rc: tuple[float, float],
                   options: ContourOptions = ContourOptions()) -> TracedPolygons:
    """Decimated closed contours of every slice of a (slices, rows, columns) mask, each >= 3 vertices.

    ``spacing_rc`` is (row spacing, column spacing) in mm. Points are (row, column) pixel indices.
    """
    if mask.ndim != 3:
        raise OutputError(f"stack_contours: expected a 3D (slices, rows, columns) mask, got shape {mask.shape}")
    mask = remove_small_islands(np.asarray(mask, dtype=bool), options.min_island_pixels)
    return _decimated(trace_stack(mask), mask, spacing_rc, options.tolerance_mm, options.preserve_raster)


def _decimated(traced: TracedPolygons, mask: np.ndarray, spacing_rc: tuple[float, float], tolerance_mm: float,
               preserve_raster: bool) -> TracedPolygons:
    reduced = decimation.remove_collinear(traced)
    if tolerance_mm <= 0:
        return reduced
    safe = SAFE_TOLERANCE_PIXELS * float(min(spacing_rc))
    if not preserve_raster or tolerance_mm <= safe:
        return decimation.douglas_peucker(reduced, spacing_rc, tolerance_mm)
    result = decimation.douglas_peucker(reduced, spacing_rc, tolerance_mm, gated=True)
    failing = decimation.raster_mismatch(result, mask)
    if failing.size == 0:
        return result
    log.debug("decimation changed the raster on %d slice(s); those use the safe tolerance", failing.size)
    redo = decimation.douglas_peucker(reduced.select(np.isin(reduced.slices, failing)), spacing_rc, safe)
    merged = concatenate([result.select(~np.isin(result.slices, failing)), redo])
    return merged.take(np.argsort(merged.slices, kind="stable"))


def trace(mask: np.ndarray) -> list[np.ndarray]:
    """Closed boundary polygons of a 2D mask, (row, col) pixel indices, open form (no repeated point)."""
    if mask.ndim != 2:
        raise OutputError(f"trace: expected a 2D mask, got shape {mask.shape}")
    traced = trace_stack(np.asarray(mask, dtype=bool)[None])
    return [traced.polygon(n) for n in range(traced.count)]


def slice_contours(mask: np.ndarray, spacing_rc: tuple[float, float],
                   options: ContourOptions = ContourOptions()) -> list[np.ndarray]:
    """Decimated closed contours of one slice's mask, (row, col) pixel indices, each >= 3 vertices."""
    if mask.ndim != 2:
        raise OutputError(f"slice_contours: expected a 2D mask, got shape {mask.shape}")
    polygons = stack_contours(np.asarray(mask)[None], spacing_rc, options)
    return [polygons.polygon(n) for n in range(polygons.count)]


def _single(points: np.ndarray) -> TracedPolygons:
    """One traced polygon with its gates rebuilt from the geometry: a vertex on a pixel-centre row
    lies between two column neighbours, else between two row neighbours; the inside one is on the
    left of the polygon's direction."""
    p = np.asarray(points, dtype=np.float64)
    on_row = np.abs(p[:, 0] - np.rint(p[:, 0])) < 1e-9
    gates = np.where(on_row[:, None], [0.0, 0.5], [0.5, 0.0])
    d = np.roll(p, -1, axis=0) - p
    side = np.sign(d[:, 0] * gates[:, 1] - d[:, 1] * gates[:, 0])
    return TracedPolygons(p, gates * side[:, None], np.array([0, len(p)]), np.zeros(1, dtype=np.int64))


def remove_collinear(points: np.ndarray) -> np.ndarray:
    """Drop vertices of a closed polygon that lie on the straight line through their neighbours."""
    if len(points) <= 3:
        return np.asarray(points)
    return decimation.remove_collinear(_single(points)).points


def decimate(points: np.ndarray, spacing_rc: tuple[float, float], tolerance_mm: float,
             preserve_raster: bool = True) -> np.ndarray:
    """Fewer vertices for one traced polygon (as :func:`trace` returns it); no part of the boundary
    moves farther than ``tolerance_mm``, and with ``preserve_raster`` it fills the same pixel centres."""
    if len(points) <= 3:
        return np.asarray(points)
    polygon = _single(points)
    low = np.floor(polygon.points.min(axis=0)) - 1
    shifted = TracedPolygons(polygon.points - low, polygon.gates, polygon.starts, polygon.slices)
    shape = tuple(int(v) for v in np.ceil(shifted.points.max(axis=0)) + 2)
    fill = rasterise_even_odd([shifted.points], shape)[None]  # type: ignore[arg-type]
    restored: np.ndarray = _decimated(shifted, fill, spacing_rc, tolerance_mm, preserve_raster).points + low
    return restored

def rasterise_even_odd(polygons_rc: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill closed polygons at pixel centres with the even-odd rule: the inverse of ``slice_contours``.

    Vectorised scanline: every edge crossing of a pixel-centre row toggles the pixels right of it
    (half-open rows, strict ``x < column``), so the cost follows the perimeter, not the area times
    the vertex count.
    """
    height, width = shape
    toggles = np.zeros((height, width + 1), dtype=np.int32)
    for poly in polygons_rc:
        p = np.asarray(poly, dtype=np.float64)
        if len(p) < 3:
            continue
        q = np.roll(p, -1, axis=0)
        r1, c1, r2, c2 = p[:, 0], p[:, 1], q[:, 0], q[:, 1]
        first = np.maximum(np.ceil(np.minimum(r1, r2)), 0).astype(np.int64)
        stop = np.minimum(np.ceil(np.maximum(r1, r2)), height).astype(np.int64)
        counts = np.maximum(stop - first, 0)
        total = int(counts.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(len(p)), counts)
        starts = np.cumsum(counts) - counts
        rows = first[edge] + (np.arange(total) - starts[edge])
        x = c1[edge] + (rows - r1[edge]) * (c2[edge] - c1[edge]) / (r2[edge] - r1[edge])
        cols = np.clip(np.floor(x).astype(np.int64) + 1, 0, width)
        toggles += np.bincount(rows * (width + 1) + cols, minlength=toggles.size).reshape(toggles.shape)
    return (np.cumsum(toggles, axis=1)[:, :width] % 2).astype(bool)
