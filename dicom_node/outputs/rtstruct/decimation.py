"""Fewer contour points without moving the boundary by more than a tolerance, for many polygons at once.

All functions work on :class:`~dicom_node.outputs.rtstruct.tracing.TracedPolygons` (every polygon of a
structure) with array operations over all polygons together; nothing loops over polygons in Python.

Lossless: vertices on the straight line through their neighbours are dropped.

Douglas-Peucker (closed polygons): each polygon starts with its first vertex and the vertex farthest
from it as anchors; a segment between two anchors is accepted when every vertex it replaces lies
within the tolerance (mm, so anisotropic pixels are handled), else it is split at its worst vertex.
All segments of all polygons are refined together, one level per round. Every point of a replaced
chain is then within the tolerance of the segment, and every point of the segment within the
tolerance of the chain (the chain crosses each perpendicular of the segment), so the boundary moves
by at most the tolerance both ways.

Keeping the raster (gated mode). Each traced vertex lies half-way between an inside and an outside
pixel centre (its gate, see :mod:`~dicom_node.outputs.rtstruct.tracing`). A segment is accepted only if it
also passes between the two centres of every gate it replaces and of its two end vertices, with a
margin (:data:`GATE_MARGIN_PIXELS`) so that rounding the coordinates to 4 decimals or a planning
system's float arithmetic cannot move a pixel centre across it. :func:`raster_mismatch` then checks
the result exactly: the even-odd crossings of every pixel-centre row must be those of the mask and
no pixel centre may lie within the margin of an edge. Slices that fail (rare) are decimated again
within the provably safe tolerance instead (module docstring of :mod:`~dicom_node.outputs.rtstruct.contours`).
"""

from __future__ import annotations

import logging

import numpy as np

from dicom_node.outputs.rtstruct.tracing import TracedPolygons

log = logging.getLogger(__name__)

# How far (pixels) every pixel centre must stay from a decimated edge: far above the 5e-5 mm of
# 4-decimal coordinates and float32 arithmetic, far below the 0.354 pixel of the traced boundary.
GATE_MARGIN_PIXELS = 0.01
_COLLINEAR_EPS = 1e-9


def _ring_neighbours(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(previous, next) vertex index of every vertex, each polygon a ring."""
    lengths = np.diff(starts)
    n = int(starts[-1])
    index = np.arange(n)
    first = np.repeat(starts[:-1], lengths)
    last = first + np.repeat(lengths, lengths) - 1
    return np.where(index == first, last, index - 1), np.where(index == last, first, index + 1)


def _keep(polygons: TracedPolygons, keep: np.ndarray) -> TracedPolygons:
    """Only the vertices where ``keep``; a polygon left with fewer than 3 keeps all its vertices."""
    lengths = np.diff(polygons.starts)
    counts = np.add.reduceat(keep.astype(np.int64), polygons.starts[:-1]) if len(lengths) else lengths
    short = counts < 3
    if short.any():
        keep = keep | np.repeat(short, lengths)
        counts = np.where(short, lengths, counts)
    return TracedPolygons(polygons.points[keep], polygons.gates[keep],
                          np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), polygons.slices)


def remove_collinear(polygons: TracedPolygons) -> TracedPolygons:
    """Drop every vertex on the straight line through its neighbours and between them (lossless)."""
    if polygons.count == 0:
        return polygons
    prev, nxt = _ring_neighbours(polygons.starts)
    p = polygons.points
    before, after = p - p[prev], p[nxt] - p
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    dot = before[:, 0] * after[:, 0] + before[:, 1] * after[:, 1]
    return _keep(polygons, (np.abs(cross) > _COLLINEAR_EPS) | (dot <= 0))


def douglas_peucker(polygons: TracedPolygons, spacing_rc: tuple[float, float], tolerance_mm: float,
                    gated: bool = False, margin: float = GATE_MARGIN_PIXELS) -> TracedPolygons:
    """Closed-polygon Douglas-Peucker on every polygon at once (module docstring); ``gated`` adds
    the gate test with ``margin`` pixels. A polygon that would keep fewer than 3 vertices is
    returned as it was."""
    if polygons.count == 0 or tolerance_mm <= 0:
        return polygons
    lengths = np.diff(polygons.starts)
    # closed chains: each polygon's first vertex repeated after its last
    cstarts = np.concatenate([[0], np.cumsum(lengths + 1)]).astype(np.int64)
    owner = np.repeat(np.arange(polygons.count), lengths + 1)
    source = polygons.starts[owner] + (np.arange(int(cstarts[-1])) - cstarts[owner]) % lengths[owner]
    # everything in mm; a gate margin of `margin` pixels is at most margin * the larger spacing in mm
    sy, sx = (float(v) for v in spacing_rc)
    y, x = polygons.points[source, 0] * sy, polygons.points[source, 1] * sx
    gy, gx = polygons.gates[source, 0] * sy, polygons.gates[source, 1] * sx
    margin_mm = margin * max(sy, sx)
    tolerance2 = tolerance_mm * tolerance_mm
    first, last = cstarts[:-1], cstarts[1:] - 1
    far = _first_argmax((y - y[first[owner]]) ** 2 + (x - x[first[owner]]) ** 2, first, owner)
    kept = np.zeros(int(cstarts[-1]), dtype=bool)
    kept[first] = kept[last] = kept[far] = True
    active = np.flatnonzero(~kept)
    before_far = active < far[owner[active]]
    seg_a = np.where(before_far, first[owner[active]], far[owner[active]])
    seg_b = np.where(before_far, far[owner[active]], last[owner[active]])
    while active.size:
        new = np.empty(active.size, dtype=bool)
        new[0] = True
        np.not_equal(seg_a[1:], seg_a[:-1], out=new[1:])
        seg_start = np.flatnonzero(new)
        seg = np.cumsum(new) - 1
        # per segment, then per replaced vertex
        a, b = seg_a[seg_start], seg_b[seg_start]
        ay, ax = y[a], x[a]
        dy, dx = y[b] - ay, x[b] - ax
        length2 = dy * dy + dx * dx
        inverse2 = 1.0 / np.where(length2 > 0, length2, 1.0)
        py, px = y[active] - ay[seg], x[active] - ax[seg]
        sdy, sdx = dy[seg], dx[seg]
        t = np.clip((py * sdy + px * sdx) * inverse2[seg], 0.0, 1.0)
        ey, ex = py - t * sdy, px - t * sdx
        dist2 = ey * ey + ex * ex
        worst = np.maximum.reduceat(dist2, seg_start)
        too_far = worst > tolerance2
        bad = too_far
        score = dist2
        if gated:
            inverse = np.sqrt(inverse2)
            sinv = inverse[seg]
            side = np.abs(sdy * px - sdx * py) * sinv
            slack = (sdy * gx[active] - sdx * gy[active]) * sinv - side
            end_slack = np.minimum(dy * gx[a] - dx * gy[a], dy * gx[b] - dx * gy[b]) * inverse
            bad = too_far | (np.minimum.reduceat(slack, seg_start) <= margin_mm) | (end_slack <= margin_mm)
            # too far: split where farthest; else where a gate is most violated
            score = np.where(too_far[seg], dist2, -slack)
        split_at = active[_first_argmax(score, seg_start, seg)]
        kept[split_at[bad]] = True
        point_split = split_at[seg]
        stay = bad[seg] & (active != point_split)
        seg_b = np.where(active < point_split, point_split, seg_b)[stay]
        seg_a = np.where(active > point_split, point_split, seg_a)[stay]
        active = active[stay]
    kept[last] = False  # the repeated first vertex
    keep = np.zeros(len(polygons.points), dtype=bool)
    keep[source[kept]] = True
    return remove_collinear(_keep(polygons, keep))


def _first_argmax(values: np.ndarray, group_start: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Index of the first maximum of ``values`` in each contiguous group."""
    best = np.maximum.reduceat(values, group_start)
    index = np.where(values == best[group], np.arange(values.size), values.size)
    return np.minimum.reduceat(index, group_start)


def raster_mismatch(polygons: TracedPolygons, mask: np.ndarray, margin: float = GATE_MARGIN_PIXELS) -> np.ndarray:
    """Slices (indices into ``mask``, sorted) where the polygons' even-odd fill at pixel centres is
    not exactly ``mask``, or where a pixel centre lies within ``margin`` pixels of an edge.

    Exact and sparse: a row's fill is fixed by where it toggles, so the crossings of each pixel-centre
    row (half-open in rows, a crossing at column x toggles the pixels right of x) are compared with
    where the mask changes along the row; nothing is filled.
    """
    depth, height, width = mask.shape
    padded = np.zeros((depth, height, width + 2), dtype=bool)
    padded[:, :, 1:-1] = mask
    expected = np.flatnonzero(padded[:, :, 1:] != padded[:, :, :-1])  # keys on a (depth, height, width + 1) grid
    if polygons.count == 0:
        return np.unique(expected // (height * (width + 1)))
    _, nxt = _ring_neighbours(polygons.starts)
    p, q = polygons.points, polygons.points[nxt]
    edge_slice = np.repeat(polygons.slices, np.diff(polygons.starts))
    r1, c1, r2, c2 = p[:, 0], p[:, 1], q[:, 0], q[:, 1]
    dr, dc = r2 - r1, c2 - c1
    length = np.hypot(dr, dc)
    lo = np.ceil(np.minimum(r1, r2)).astype(np.int64)
    hi = np.ceil(np.maximum(r1, r2)).astype(np.int64)
    counts = hi - lo
    edge = np.repeat(np.arange(len(p)), counts)
    rows = lo[edge] + np.arange(edge.size) - np.repeat(np.cumsum(counts) - counts, counts)
    x = c1[edge] + (rows - r1[edge]) * dc[edge] / dr[edge]
    cols = np.clip(np.floor(x).astype(np.int64) + 1, 0, width)
    keys = np.sort((edge_slice[edge] * height + rows) * (width + 1) + cols)
    # only keys crossed an odd number of times toggle the fill
    run_start = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else np.zeros(0, dtype=np.int64)
    odd = keys[run_start[np.diff(np.r_[run_start, keys.size]) % 2 == 1]]
    bad: list[np.ndarray] = []
    if not np.array_equal(odd, expected):
        bad.append(np.setxor1d(odd, expected, assume_unique=True) // (height * (width + 1)))
    # pixel centres near an edge: on crossed rows, on an edge's integer end row, on a horizontal edge
    near = np.abs(x - np.rint(x)) * np.abs(dr[edge]) / length[edge] < margin
    top = np.maximum(r1, r2)
    end_row = (dr != 0) & (top == np.rint(top)) & (0.5 * np.abs(dr) / np.where(length > 0, length, 1.0) < margin)
    flat = (dr == 0) & (r1 == np.rint(r1))
    bad.append(edge_slice[edge[near]])
    bad.append(edge_slice[end_row | flat])
    return np.unique(np.concatenate(bad))
