"""Spinal cord from the vertebral canal, for the classical segmenter.

Canonical arrays only (see :mod:`segmenter.classical.orient`): (z, y, x), indices increasing
towards superior, posterior and patient left.

The cord itself is barely distinguishable from CSF and epidural fat on CT, but the bony canal
around it is: on each axial slice the canal is a soft-tissue hole enclosed by the vertebral arch,
near the midline and posterior to the vertebral body. Holes found on single slices are kept only
where they follow one smooth path along z; slices where the arch is open (between two vertebrae)
get a disc of the typical canal size on the interpolated path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

# Vertebral cortex; lower than the bone threshold proper so that thin laminae close the ring.
CANAL_BONE_HU = 150.0
# Closing radii tried in turn to bridge the gaps of the arch on a slice: the smallest that closes
# the ring changes the canal's outline least.
CANAL_CLOSING_MM = (2.0, 4.0, 6.0)
# Canal cross-sections: ~1.2 cm^2 (thoracic) to ~3 cm^2 (lumbar); generous bounds, the path
# filter below rejects the rest.
CANAL_MIN_MM2 = 50.0
CANAL_MAX_MM2 = 600.0
# Cord, CSF and epidural fat average -50..80 HU; marrow holes in a vertebral body are denser.
CANAL_HU = (-80.0, 110.0)
# The canal lies within this distance of the body's left-right centre.
CANAL_MIDLINE_MM = 30.0
# The search window reaches this far beyond the midline band and in front of the trunk's centre.
SEARCH_MARGIN_MM = 40.0
# Canal centres further than this from the smoothed path are other holes.
PATH_TOLERANCE_MM = 8.0
# A found hole is kept within this multiple of the typical canal radius around the path.
HOLE_RADIUS_FACTOR = 1.3
# Beyond the first and last slices with a found canal, the cord continues this far on its path.
EXTEND_MM = 12.0
# Minimum number of slices with a found canal before the path is trusted.
MIN_FOUND_SLICES = 3


@dataclass(frozen=True)
class CanalHole:
    z: int
    cy: float  # centroid row (posterior +)
    cx: float  # centroid column (left +)
    area_mm2: float
    mask: np.ndarray  # 2D mask on slice z


def _disc(radius_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    ry = max(1, round(radius_mm / spacing[1]))
    rx = max(1, round(radius_mm / spacing[2]))
    y, x = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    return (y / ry) ** 2 + (x / rx) ** 2 <= 1.0


def _holes_on_slice(hu2d: np.ndarray, body2d: np.ndarray, z: int,
                    spacing: tuple[float, float, float]) -> list[list[CanalHole]]:
    """Canal candidates on one slice, one list per closing radius."""
    xs = np.flatnonzero(body2d.any(axis=0))
    ys = np.flatnonzero(body2d.any(axis=1))
    if xs.size == 0:
        return [[] for _ in CANAL_CLOSING_MM]
    centre_x = 0.5 * (xs[0] + xs[-1])
    centre_y = 0.5 * (ys[0] + ys[-1])
    # Only the posterior midline can hold the canal: work on that window (a tenth of the slice).
    half_width = round((CANAL_MIDLINE_MM + SEARCH_MARGIN_MM) / spacing[2])
    x0, x1 = max(0, int(centre_x) - half_width), min(hu2d.shape[1], int(centre_x) + half_width + 1)
    y0, y1 = max(0, int(centre_y) - round(SEARCH_MARGIN_MM / spacing[1])), int(ys[-1]) + 1
    window = (slice(y0, y1), slice(x0, x1))
    bone = (hu2d[window] > CANAL_BONE_HU) & body2d[window]
    out = []
    for closing_mm in CANAL_CLOSING_MM:
        found = []
        for cy, cx, area, mask in _holes(bone, hu2d[window], closing_mm, spacing):
            # The spine is in the posterior half of the trunk, on the midline.
            cy, cx = cy + y0, cx + x0
            if abs(cx - centre_x) * spacing[2] > CANAL_MIDLINE_MM or cy < centre_y:
                continue
            full = np.zeros(hu2d.shape, dtype=bool)
            full[window] = mask
            found.append(CanalHole(z, cy, cx, area, full))
        out.append(found)
    return out


def _holes(bone: np.ndarray, hu2d: np.ndarray, closing_mm: float,
           spacing: tuple[float, float, float]) -> list[tuple[float, float, float, np.ndarray]]:
    """Soft-tissue holes of canal size enclosed by ``bone`` once closed by ``closing_mm``."""
    closed = ndimage.binary_closing(bone, structure=_disc(closing_mm, spacing)) | bone
    holes = ndimage.binary_fill_holes(closed) & ~closed
    labels, n = ndimage.label(holes)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:] * spacing[1] * spacing[2]
    means = ndimage.mean(hu2d, labels, index)
    centres = ndimage.center_of_mass(holes, labels, index)
    return [(float(cy), float(cx), float(area), labels == label)
            for label, area, mean, (cy, cx) in zip(index, areas, means, centres, strict=True)
            if CANAL_MIN_MM2 <= area <= CANAL_MAX_MM2 and CANAL_HU[0] <= mean <= CANAL_HU[1]]


def _smooth_path(points: list[CanalHole], nz: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the canal centre on every slice: a running median, linearly interpolated."""
    zs = np.array([p.z for p in points], dtype=float)
    cy = np.array([p.cy for p in points])
    cx = np.array([p.cx for p in points])
    order = np.argsort(zs)
    zs, cy, cx = zs[order], cy[order], cx[order]
    window = 5
    my = np.array([np.median(cy[max(0, i - window):i + window + 1]) for i in range(len(zs))])
    mx = np.array([np.median(cx[max(0, i - window):i + window + 1]) for i in range(len(zs))])
    all_z = np.arange(nz, dtype=float)
    return np.interp(all_z, zs, my), np.interp(all_z, zs, mx)


def _placed(disc: np.ndarray, cy: float, cx: float, shape: tuple[int, ...]) -> np.ndarray:
    """``disc`` centred on (cy, cx) in a 2D mask of ``shape``, clipped at the edges."""
    ry, rx = disc.shape[0] // 2, disc.shape[1] // 2
    y0, x0 = round(cy), round(cx)
    out = np.zeros(shape, dtype=bool)
    ys = slice(max(0, y0 - ry), min(shape[0], y0 + ry + 1))
    xs = slice(max(0, x0 - rx), min(shape[1], x0 + rx + 1))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys, xs] = disc[ys.start - (y0 - ry):ys.stop - (y0 - ry), xs.start - (x0 - rx):xs.stop - (x0 - rx)]
    return out


def segment_cord(hu: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The spinal cord (the soft tissue of the vertebral canal) on every slice where the spine is found."""
    nz = hu.shape[0]
    cord = np.zeros(hu.shape, dtype=bool)
    candidates = {z: _holes_on_slice(hu[z], body[z], z, spacing) for z in range(nz)}
    # The first path: on each slice, the most posterior candidate at the smallest closing radius
    # that finds any. Behind the canal lie only the lamina and spinous process, so a canal hole
    # that is found is the rearmost; marrow holes of the vertebral body lie in front of it. The
    # running median of the path then overrides the odd slice where this is wrong.
    single = []
    for per_radius in candidates.values():
        for holes in per_radius:
            if holes:
                single.append(max(holes, key=lambda h: h.cy))
                break
    if len(single) < MIN_FOUND_SLICES:
        logger.info("vertebral canal found on %d slice(s) only; no spinal cord", len(single))
        return cord
    path_y, path_x = _smooth_path(single, nz)
    tolerance_px = PATH_TOLERANCE_MM / spacing[2]
    chosen: dict[int, CanalHole] = {}
    for z, per_radius in candidates.items():
        for holes in per_radius:
            near = [h for h in holes if np.hypot(h.cy - path_y[z], h.cx - path_x[z]) <= tolerance_px]
            if near:
                chosen[z] = min(near, key=lambda h: np.hypot(h.cy - path_y[z], h.cx - path_x[z]))
                break
    if len(chosen) < MIN_FOUND_SLICES:
        return cord
    path_y, path_x = _smooth_path(list(chosen.values()), nz)
    typical_area = float(np.median([h.area_mm2 for h in chosen.values()]))
    typical_radius = float(np.sqrt(typical_area / np.pi))
    disc = _disc(typical_radius, spacing)
    big_disc = _disc(HOLE_RADIUS_FACTOR * typical_radius, spacing)
    zs = sorted(chosen)
    # The canal goes on past the last closed arch (an open one at the edge of the scan).
    extend = int(EXTEND_MM // spacing[0])
    for z in range(max(0, zs[0] - extend), min(nz - 1, zs[-1] + extend) + 1):
        if z in chosen:
            # A wide closing can also enclose a foramen or the gap behind an open arch: keep the
            # found hole within a little more than the typical canal around its path.
            cord[z] = chosen[z].mask & _placed(big_disc, path_y[z], path_x[z], hu.shape[1:])
            continue
        # Between two vertebral arches the canal goes on: the typical section on the path, less bone.
        bone = ndimage.binary_dilation(hu[z] > CANAL_BONE_HU)
        cord[z] = _placed(disc, path_y[z], path_x[z], hu.shape[1:]) & ~bone
    cord &= body
    logger.debug("canal found on %d of %d slices in z %d..%d", len(chosen), zs[-1] - zs[0] + 1, zs[0], zs[-1])
    return cord
