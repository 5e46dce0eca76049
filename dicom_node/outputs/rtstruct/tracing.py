"""Marching squares on a whole stack of slices at once: every boundary polygon of every slice.

The RTSTRUCT writer traces thousands of slices; tracing them one by one (``skimage.measure.
find_contours``) spends its time in Python per slice and per contour. Here the cell configurations of
all slices are computed with array operations, every cell contributes its oriented segments, and the
segments are linked into closed polygons by pointer jumping, so the cost per slice is a few array
elements, not a Python call.

Geometry (the same as ``find_contours(mask, 0.5, fully_connected="low")`` on a mask padded by one
background pixel): vertices are the mid-points between 4-adjacent pixel centres of different value;
inside pixels are 4-connected (a saddle cell cuts off each inside corner on its own, so two pixels
touching at a corner give two polygons). Every polygon is oriented with the inside pixels on its
left (positive cross product in (row, column) coordinates), holes included, so even-odd filling of a
slice's polygons reproduces its mask exactly.

Gates. Each vertex lies half-way between an inside and an outside pixel centre. ``TracedPolygons.
gates`` holds the offset (length 0.5 pixel) from the vertex to its inside centre: the decimation
keeps every simplified edge passing between such pairs, which is what keeps the raster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# Cells per slab: bounds the link table (2 int32 per cell) to 32 MiB whatever the mask size.
SLAB_CELLS = 4_000_000

# Corner bits of a marching-squares cell and their (row, column) offsets.
_CORNER_OFFSETS = {1: (0.0, 0.0), 2: (0.0, 1.0), 4: (1.0, 1.0), 8: (1.0, 0.0)}
# Edges T, R, B, L: mid-point offset and the two corners they lie between.
_EDGE_MIDPOINTS = ((0.0, 0.5), (0.5, 1.0), (1.0, 0.5), (0.5, 0.0))
_EDGE_CORNERS = ((1, 2), (2, 4), (4, 8), (8, 1))


def _cross(a: tuple[float, float], b: tuple[float, float]) -> float:
    return a[0] * b[1] - a[1] * b[0]


def _segment_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per configuration (16) and segment slot (2): from-edge, to-edge (-1: none) and from-gate.

    Built from the rule rather than typed in, so the orientation (inside on the left) and the saddle
    choice (inside 4-connected) cannot be mistyped.
    """
    from_edge = np.full((16, 2), -1, dtype=np.int64)
    to_edge = np.full((16, 2), -1, dtype=np.int64)
    gate = np.zeros((16, 2, 2), dtype=np.float64)
    for config in range(16):
        inside = [bit for bit in (1, 2, 4, 8) if config & bit]
        crossing = [e for e, (a, b) in enumerate(_EDGE_CORNERS) if (a in inside) != (b in inside)]
        if len(crossing) == 2:
            pairs = [(crossing[0], crossing[1], inside[0])]
        elif len(crossing) == 4:  # saddle: each inside corner is cut off on its own
            cut = [[e for e in range(4) if bit in _EDGE_CORNERS[e]] for bit in inside]  # two edges per corner
            pairs = [(edges[0], edges[1], bit) for edges, bit in zip(cut, inside, strict=True)]
        else:
            pairs = []
        for slot, (e1, e2, corner) in enumerate(pairs):
            m1, m2, c = _EDGE_MIDPOINTS[e1], _EDGE_MIDPOINTS[e2], _CORNER_OFFSETS[corner]
            if _cross((m2[0] - m1[0], m2[1] - m1[1]), (c[0] - m1[0], c[1] - m1[1])) < 0:
                e1, e2, m1 = e2, e1, m2
            from_edge[config, slot], to_edge[config, slot] = e1, e2
            inner = next(bit for bit in _EDGE_CORNERS[e1] if bit in inside)
            gate[config, slot] = np.subtract(_CORNER_OFFSETS[inner], m1)
    return from_edge, to_edge, gate


_FROM_EDGE, _TO_EDGE, _GATE = _segment_table()
_MID = np.asarray(_EDGE_MIDPOINTS)


@dataclass(frozen=True)
class TracedPolygons:
    """Closed polygons of a stack of slices; polygon n is ``points[starts[n]:starts[n + 1]]``.

    ``points`` are (row, column) pixel indices of the traced mask, ``gates`` the offsets from each
    vertex to its inside pixel centre, ``slices`` the slice index of each polygon. Polygons are
    ordered by slice, then by their first vertex in raster order; no vertex is repeated.
    """

    points: np.ndarray  # (N, 2) float64
    gates: np.ndarray  # (N, 2) float64
    starts: np.ndarray  # (P + 1,) int64
    slices: np.ndarray  # (P,) int64

    @property
    def count(self) -> int:
        return len(self.slices)

    def polygon(self, n: int) -> np.ndarray:
        return self.points[self.starts[n]:self.starts[n + 1]]

    def take(self, order: np.ndarray) -> TracedPolygons:
        """The polygons ``order`` (indices), in that order."""
        lengths = np.diff(self.starts)[order]
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        source = np.repeat(self.starts[:-1][order] - starts[:-1], lengths) + np.arange(int(starts[-1]))
        return TracedPolygons(self.points[source], self.gates[source], starts, self.slices[order])

    def select(self, keep: np.ndarray) -> TracedPolygons:
        """Only the polygons where ``keep`` (bool, one per polygon) is true."""
        lengths = np.diff(self.starts)
        vertex_keep = np.repeat(keep, lengths)
        return TracedPolygons(self.points[vertex_keep], self.gates[vertex_keep],
                              np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64),
                              self.slices[keep])


def empty_polygons() -> TracedPolygons:
    return TracedPolygons(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(1, dtype=np.int64),
                          np.zeros(0, dtype=np.int64))


def concatenate(parts: list[TracedPolygons]) -> TracedPolygons:
    parts = [p for p in parts if p.count]
    if not parts:
        return empty_polygons()
    if len(parts) == 1:
        return parts[0]
    lengths = np.concatenate([np.diff(p.starts) for p in parts])
    return TracedPolygons(np.concatenate([p.points for p in parts]), np.concatenate([p.gates for p in parts]),
                          np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                          np.concatenate([p.slices for p in parts]))


def trace_stack(mask: np.ndarray) -> TracedPolygons:
    """Every boundary polygon of every slice of a (slices, rows, columns) boolean mask."""
    if mask.ndim != 3:
        raise ValueError(f"trace_stack: expected a 3D (slices, rows, columns) mask, got shape {mask.shape}")
    depth, height, width = mask.shape
    per_slice = (height + 2) * (width + 2)
    step = max(1, SLAB_CELLS // per_slice)
    parts = []
    for k0 in range(0, depth, step):
        part = _trace_slab(mask[k0:k0 + step])
        if part.count:
            parts.append(TracedPolygons(part.points, part.gates, part.starts, part.slices + k0))
    return concatenate(parts)


def _trace_slab(mask: np.ndarray) -> TracedPolygons:
    depth, height, width = mask.shape
    rows, cols = height + 2, width + 2
    padded = np.zeros((depth, rows + 1, cols + 1), dtype=np.uint8)
    padded[:, 1:height + 1, 1:width + 1] = mask
    # cell (k, i, j) spans padded pixels (i..i+1, j..j+1); stored on a (rows, cols) grid so that a
    # cell's flat index is also the base of its edge-point ids
    config = padded[:, :-1, :-1] | (padded[:, :-1, 1:] << 1) | (padded[:, 1:, 1:] << 2) | (padded[:, 1:, :-1] << 3)
    cells = np.flatnonzero((config.ravel() - np.uint8(1)) < 14)  # configurations 1..14
    if cells.size == 0:
        return empty_polygons()
    kind = config.ravel()[cells]
    saddle = (kind == 5) | (kind == 10)
    cell = np.concatenate([cells, cells[saddle]])
    kind = np.concatenate([kind, kind[saddle]])
    slot = np.concatenate([np.zeros(cells.size, dtype=np.int64), np.ones(int(saddle.sum()), dtype=np.int64)])
    e_from, e_to = _FROM_EDGE[kind, slot], _TO_EDGE[kind, slot]
    # edge-point id: 2 * (flat index of the point's cell) + (0: between row neighbours' columns, 1: ...)
    delta = np.array([0, 3, 2 * cols, 1], dtype=np.int64)
    from_id, to_id = 2 * cell + delta[e_from], 2 * cell + delta[e_to]
    table = np.empty(2 * depth * rows * cols + 2 * cols + 4, dtype=np.int32)  # sparse: few pages touched
    table[from_id] = np.arange(from_id.size, dtype=np.int32)
    nxt = table[to_id]
    order, starts = _cycles(nxt)
    cell, e_from, kind, slot = cell[order], e_from[order], kind[order], slot[order]
    k, rest = np.divmod(cell, rows * cols)
    i, j = np.divmod(rest, cols)
    points = np.stack([i + _MID[e_from, 0] - 1.0, j + _MID[e_from, 1] - 1.0], axis=1)
    return TracedPolygons(points, _GATE[kind, slot], starts, k[starts[:-1]])


def _cycles(nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order the elements of a permutation cycle by cycle: (order, starts of each cycle in it).

    Pointer jumping: after round t, ``low[i]`` is the smallest index among the 2**t elements from i
    on and ``ahead[i]`` how many steps from i it first occurs; once every window covers its cycle,
    ``low`` names the cycle (its smallest index, the head) and ``ahead`` gives each element's place.
    """
    n = nxt.size
    low = np.arange(n)
    ahead = np.zeros(n, dtype=np.int64)
    jump = nxt.copy()
    span = 1
    while True:
        low_there = low[jump]
        later = low_there < low
        ahead = np.where(later, ahead[jump] + span, ahead)
        low = np.where(later, low_there, low)
        span *= 2
        if np.array_equal(low[nxt], low):
            break
        jump = jump[jump]
    heads = np.flatnonzero(low == np.arange(n))
    lengths = np.bincount(low, minlength=n)[heads]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    offset = np.empty(n, dtype=np.int64)
    offset[heads] = starts[:-1]
    length_of = np.empty(n, dtype=np.int64)
    length_of[heads] = lengths
    position = (length_of[low] - ahead) % length_of[low]
    order = np.empty(n, dtype=np.int64)
    order[offset[low] + position] = np.arange(n)
    return order, starts
