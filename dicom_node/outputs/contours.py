"""Planar contours from voxel masks, and back: the geometry behind the RTSTRUCT writer.

Representation. On each slice a mask is traced with marching squares (``skimage.measure.find_contours``
at level 0.5 on the mask padded by one background pixel). Every boundary between inside and outside
pixels becomes one closed polygon: outer boundaries and hole boundaries alike, as separate contours.
The polygons pass half-way between the centres of inside and outside pixels, so **even-odd filling of
all contours of a slice at the pixel centres reproduces the mask exactly** (before decimation): a hole
contour inside an outer contour subtracts, an island inside a hole adds again. This is the rule
plastimatch and most planning systems apply to several contours of one ROI on one plane.

Connectivity. Inside pixels are 4-connected (``fully_connected="low"``): two pixels touching only at a
corner give two contours, never one polygon pinched through a point.

Decimation. Exactly collinear vertices (straight runs) are removed losslessly; then Douglas-Peucker
with a tolerance in millimetres (default 0.5 mm) removes vertices whose removal moves the boundary by
at most that distance. By default (``preserve_raster``) a decimated contour must still cover exactly
the same pixel centres, else a smaller tolerance and finally the lossless reduction are used, so the
RTSTRUCT re-rasterises to the very mask the SEG holds. A contour that decimation would reduce below 3
points is kept undecimated, so small islands are never lost to it.

Why 0.3 pixel needs no check: every pixel centre is at least 0.354 pixel from the traced boundary.
A Douglas-Peucker segment replaces a chain whose vertices, hence the whole chain, lie in the convex
capsule of radius ``t`` around the segment; a pixel centre whose fill changes (or that the segment
touches) lies in the region between chain and segment, inside the capsule, and a ray from it away
from the segment meets the chain within ``t``. With ``t`` <= 0.3 pixel (the tolerance in mm over the
smaller pixel spacing) no such centre exists. Small polygons (at most ``SMALL_CONTOUR_POINTS``
vertices, e.g. thousands of bone fragments) use only that safe tolerance, so they are never
re-rasterised; larger ones try the configured tolerance first and are checked.

Island threshold. ``min_island_pixels`` (default 1: keep everything) drops 4-connected islands smaller
than that many pixels on a slice before tracing. Holes are always kept.

Coordinates. Polygons are (row, column) continuous pixel indices of the slice; ``to_patient`` maps them
onto the slice's plane in patient coordinates (DICOM LPS) with the image's own position, orientation
and spacing, so any orientation (feet first, prone, flipped axes) is handled the same way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import find_contours

from dicom_node.errors import OutputError

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_MM = 0.5
DEFAULT_MIN_ISLAND_PIXELS = 1
# Traced edges join mid-points of neighbouring pixel centres, so every pixel centre is at least
# 0.5/sqrt(2) = 0.354 pixel from the traced boundary; a decimation within 0.3 pixel keeps the fill.
SAFE_TOLERANCE_PIXELS = 0.3
# Polygons of at most this many vertices (after the lossless reduction) are not decimated further.
MIN_DECIMATE_POINTS = 4
# Polygons of at most this many vertices are decimated with the safe tolerance only (no fill check).
SMALL_CONTOUR_POINTS = 24
_COLLINEAR_EPS = 1e-9


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
    """``mask`` without its 4-connected components smaller than ``min_pixels`` (1 keeps everything)."""
    if min_pixels <= 1:
        return mask
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[components]


def trace(mask: np.ndarray) -> list[np.ndarray]:
    """Closed boundary polygons of a 2D mask, (row, col) pixel indices, open form (no repeated point).

    Only the bounding box of the mask is traced; an empty mask gives no polygons.
    """
    if mask.ndim != 2:
        raise OutputError(f"trace: expected a 2D mask, got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    padded = np.zeros((r1 - r0 + 2, c1 - c0 + 2), dtype=np.float32)
    padded[1:-1, 1:-1] = mask[r0:r1, c0:c1]
    offset = np.array([r0 - 1, c0 - 1], dtype=np.float64)
    polygons = []
    for contour in find_contours(padded, 0.5, fully_connected="low"):
        # find_contours closes contours by repeating the first point; the padding makes them all closed
        points = contour[:-1] if len(contour) > 1 and np.array_equal(contour[0], contour[-1]) else contour
        if len(points) >= 3:
            polygons.append(points + offset)
    return polygons


def remove_collinear(points: np.ndarray) -> np.ndarray:
    """Drop vertices of a closed polygon that lie on the straight line through their neighbours."""
    if len(points) <= 3:
        return points
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    keep = np.abs(cross) > _COLLINEAR_EPS
    if np.count_nonzero(keep) < 3:
        return points
    return points[keep]


def decimate(points: np.ndarray, spacing_rc: tuple[float, float], tolerance_mm: float,
             preserve_raster: bool = True) -> np.ndarray:
    """Fewer vertices for a closed polygon; no original vertex ends farther than ``tolerance_mm``.

    ``spacing_rc`` is (row spacing, column spacing) in mm, so the tolerance holds in patient space
    for anisotropic pixels. With ``preserve_raster`` the result must also fill exactly the same pixel
    centres as the input: if it does not, a smaller tolerance (0.3 pixel, under the 0.35 pixel that
    separates a traced boundary from the nearest pixel centre) is tried, then only the lossless
    removal of collinear vertices. Polygons that would fall below 3 vertices are returned as they were.
    """
    reduced = remove_collinear(points)
    if tolerance_mm <= 0 or len(reduced) <= MIN_DECIMATE_POINTS:
        return reduced
    scale = np.asarray(spacing_rc, dtype=np.float64)
    safe = SAFE_TOLERANCE_PIXELS * float(min(spacing_rc))
    tolerances = [tolerance_mm]
    if preserve_raster and safe < tolerance_mm:
        # small contours (thousands of bone fragments) go straight to the safe tolerance: no fill check
        tolerances = [safe] if len(reduced) <= SMALL_CONTOUR_POINTS else [tolerance_mm, safe]
    for tol in tolerances:
        candidate = _douglas_peucker(reduced, scale, tol)
        if candidate is None:
            continue
        # within the safe tolerance the fill cannot change (module docstring), so it is not re-checked
        if not preserve_raster or tol <= safe or _same_fill(reduced, candidate):
            return candidate
    return reduced


def _douglas_peucker(points: np.ndarray, scale: np.ndarray, tolerance_mm: float) -> np.ndarray | None:
    """Closed-polygon Douglas-Peucker, vectorised over all segments of one refinement level.

    Every vertex left out lies within ``tolerance_mm`` of the segment that replaces it. Small polygons
    take a plain-Python path (same splits): numpy's per-call overhead dominates below ~64 vertices.
    """
    if len(points) <= _PYTHON_DP_POINTS:
        kept_indices = _douglas_peucker_small(points, scale, tolerance_mm)
        if kept_indices is None:
            return None
        result = remove_collinear(points[kept_indices])
        return result if len(result) >= 3 else None
    closed = np.vstack([points, points[:1]]) * scale  # chain 0..n, point n == point 0
    n = len(points)
    farthest = int(np.argmax(np.sum((closed - closed[0]) ** 2, axis=1)))
    if farthest == 0:
        return None
    kept = np.zeros(n + 1, dtype=bool)
    kept[[0, farthest, n]] = True
    index = np.arange(n + 1)
    while True:
        anchors = np.flatnonzero(kept)
        segment = np.searchsorted(anchors, index, side="right") - 1
        segment[-1] = len(anchors) - 2
        a, b = closed[anchors[segment]], closed[anchors[segment + 1]]
        ab = b - a
        length2 = np.sum(ab * ab, axis=1)
        t = np.clip(np.sum((closed - a) * ab, axis=1) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
        dist = np.linalg.norm(closed - (a + t[:, None] * ab), axis=1)
        dist[kept] = 0.0
        worst = np.maximum.reduceat(dist, anchors[:-1])
        split = worst > tolerance_mm
        if not split.any():
            break
        candidates = np.flatnonzero(split[segment] & (dist == worst[segment]) & ~kept)
        _, first = np.unique(segment[candidates], return_index=True)
        kept[candidates[first]] = True
    result = remove_collinear(points[np.flatnonzero(kept[:-1])])
    return result if len(result) >= 3 else None


_PYTHON_DP_POINTS = 64


def _douglas_peucker_small(points: np.ndarray, scale: np.ndarray, tolerance_mm: float) -> list[int] | None:
    """Indices kept by closed-polygon Douglas-Peucker (as :func:`_douglas_peucker`), in plain Python."""
    sy, sx = float(scale[0]), float(scale[1])
    pts = [(r * sy, c * sx) for r, c in points.tolist()]
    n = len(pts)
    pts.append(pts[0])
    y0, x0 = pts[0]
    far2 = [(y - y0) ** 2 + (x - x0) ** 2 for y, x in pts]
    farthest = max(range(n + 1), key=far2.__getitem__)  # first maximum, as np.argmax
    if farthest == 0:
        return None
    kept = {0, farthest, n}
    stack = [(0, farthest), (farthest, n)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        ay, ax = pts[a]
        dy, dx = pts[b][0] - ay, pts[b][1] - ax
        length2 = dy * dy + dx * dx
        worst, where = -1.0, -1
        for index in range(a + 1, b):
            py, px = pts[index][0] - ay, pts[index][1] - ax
            t = (py * dy + px * dx) / length2 if length2 > 0 else 0.0
            t = 0.0 if t < 0.0 else 1.0 if t > 1.0 else t
            dist = math.hypot(py - t * dy, px - t * dx)
            if dist > worst:
                worst, where = dist, index
        if worst > tolerance_mm:
            kept.add(where)
            stack.extend(((a, where), (where, b)))
    return sorted(k for k in kept if k < n)


_TIE_SHIFTS = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) * 0.02


def _same_fill(original: np.ndarray, candidate: np.ndarray) -> bool:
    """Does ``candidate`` cover the same pixel centres as ``original``, with no centre on its edges?

    Traced polygons never pass through a pixel centre; a decimated one may, and then rasterisers
    disagree on that pixel. So the candidate is filled four times, nudged by 0.02 pixel diagonally,
    and every fill must equal the original's.
    """
    both = np.vstack([original, candidate])
    low = np.floor(both.min(axis=0)) - 1
    height, width = (int(v) for v in np.ceil(both.max(axis=0)) - low + 2)
    # the five fills side by side in one raster: copy n is moved down by n * height rows
    polygons = [original - low] + [candidate - low + shift + [height * (n + 1), 0.0]
                                   for n, shift in enumerate(_TIE_SHIFTS)]
    fills = rasterise_even_odd(polygons, (height * len(polygons), width)).reshape(len(polygons), height, width)
    return bool(np.all(fills[1:] == fills[0]))


def slice_contours(mask: np.ndarray, spacing_rc: tuple[float, float],
                   options: ContourOptions = ContourOptions()) -> list[np.ndarray]:
    """Decimated closed contours of one slice's mask, (row, col) pixel indices, each >= 3 vertices."""
    mask = remove_small_islands(np.asarray(mask, dtype=bool), options.min_island_pixels)
    out = []
    for points in trace(mask):
        simplified = decimate(points, spacing_rc, options.tolerance_mm, options.preserve_raster)
        if len(simplified) >= 3:
            out.append(simplified)
        else:  # pragma: no cover - trace() and decimate() keep >= 3 points; the rule is kept explicit
            log.debug("dropped a contour of %d points", len(simplified))
    return out


@dataclass(frozen=True)
class SlicePlane:
    """Where a slice's pixels are in patient space: P = position + col * row_step + row * col_step.

    ``row_cosine`` is the direction of increasing column index (first half of ImageOrientationPatient)
    and ``column_cosine`` that of increasing row index; ``spacing_rc`` is PixelSpacing (row, column).
    """

    position: tuple[float, float, float]
    row_cosine: tuple[float, float, float]
    column_cosine: tuple[float, float, float]
    spacing_rc: tuple[float, float]

    def to_patient(self, points_rc: np.ndarray) -> np.ndarray:
        """(N, 2) (row, col) pixel indices -> (N, 3) patient coordinates in mm on this plane."""
        pts = np.asarray(points_rc, dtype=np.float64)
        along_row = pts[:, 1:2] * self.spacing_rc[1] * np.asarray(self.row_cosine)
        along_col = pts[:, 0:1] * self.spacing_rc[0] * np.asarray(self.column_cosine)
        return np.asarray(self.position) + along_row + along_col

    def to_pixels(self, points_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) patient points -> ((N, 2) (row, col) pixel indices, (N,) distance from the plane)."""
        rel = np.asarray(points_xyz, dtype=np.float64) - np.asarray(self.position)
        col = rel @ np.asarray(self.row_cosine) / self.spacing_rc[1]
        row = rel @ np.asarray(self.column_cosine) / self.spacing_rc[0]
        normal = np.cross(self.row_cosine, self.column_cosine)
        return np.stack([row, col], axis=1), rel @ normal


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
