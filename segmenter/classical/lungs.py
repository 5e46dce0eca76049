"""Lungs and airway (trachea with the main bronchi) for the classical segmenter.

Canonical arrays only (see :mod:`segmenter.classical.orient`): (z, y, x), indices increasing
towards superior, posterior and patient left.

Method: air inside the body outline that does not reach outside air forms 3D components; the
lung-like ones (large, with parenchyma rather than pure gas HU) are the lungs joined by the
airway. The airway is tracked slice by slice from the top as a small midline air section, down
through the carina into both main bronchi until a section widens into lung. Lungs are the rest,
split into left and right in patient coordinates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segmenter.classical.body import IN_PLANE, fill_holes_in_plane

logger = logging.getLogger(__name__)

# Aerated lung lies at -950..-700 HU; -400 keeps the partial-volume rim that clinical lung
# contours (drawn in a lung window) include, and excludes every soft tissue.
AIR_HU = -400.0
# A lung (even one basal slab in an abdominal scan) is larger than this; bowel gas pockets mostly not.
LUNG_MIN_ML = 30.0
# Aerated parenchyma has a median around -850 HU; gas in bowel or outside the patient is ~-1000 HU.
LUNG_MEDIAN_HU_MIN = -960.0
# Airway cross-sections: adult trachea 1.5-3 cm wide (~150-600 mm^2); a section larger than
# AIRWAY_MAX_MM2, or AIRWAY_GROWTH times the whole airway section one slice above, has merged into
# lung parenchyma (that jump is tenfold; larynx and trachea change gradually).
AIRWAY_MIN_MM2 = 40.0
AIRWAY_MAX_MM2 = 700.0
AIRWAY_GROWTH = 2.5
# The trachea lies within this distance of the body's left-right centre.
AIRWAY_MIDLINE_MM = 35.0
# Bronchi shift by a few millimetres between slices; overlap is tested against the previous
# section grown by this much.
AIRWAY_STEP_MM = 4.0
# Two lung components are both lungs when the smaller one has at least this fraction of the larger.
SECOND_LUNG_FRACTION = 0.1
# Joined lungs are eroded at most this many voxels deep to separate them.
SPLIT_MAX_EROSIONS = 6
# Leftover joined voxels are cut at the emptiest column within this distance of the body's centre.
SPLIT_WINDOW_MM = 30.0


@dataclass(frozen=True)
class LungResult:
    left: np.ndarray
    right: np.ndarray
    airway: np.ndarray


def _disc(radius_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    ry = max(1, round(radius_mm / spacing[1]))
    rx = max(1, round(radius_mm / spacing[2]))
    y, x = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    return (y / ry) ** 2 + (x / rx) ** 2 <= 1.0


def lung_air(hu: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Lung-like air components inside the body (lungs, airway), without bowel gas."""
    air = (hu < AIR_HU) & body
    labels, n = ndimage.label(air)
    if n == 0:
        return np.zeros_like(air)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    idx = np.arange(1, n + 1)
    big = idx[sizes[1:] * voxel_ml >= LUNG_MIN_ML]
    keep: list[int] = []
    for label in big:
        values = hu[labels == label]
        median = float(np.median(values))
        if median >= LUNG_MEDIAN_HU_MIN:
            keep.append(int(label))
        else:
            logger.debug("air component of %.0f ml (median %.0f HU) is gas, not lung", sizes[label] * voxel_ml, median)
    return np.isin(labels, keep)


def track_airway(air: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Trachea and main bronchi inside ``air``, tracked downwards from the top slice where they appear."""
    pixel_mm2 = spacing[1] * spacing[2]
    airway = np.zeros_like(air)
    grow = _disc(AIRWAY_STEP_MM, spacing)
    previous: np.ndarray | None = None
    previous_area = 0.0
    for z in range(air.shape[0] - 1, -1, -1):
        labels, n = ndimage.label(air[z])
        if n == 0:
            if previous is not None:
                break
            continue
        areas = np.bincount(labels.ravel(), minlength=n + 1) * pixel_mm2
        if previous is None:
            body_x = np.flatnonzero(body[z].any(axis=0))
            if body_x.size == 0:
                continue
            centre_x = 0.5 * (body_x[0] + body_x[-1])
            best, best_area = 0, 0.0
            for label in range(1, n + 1):
                if not AIRWAY_MIN_MM2 <= areas[label] <= AIRWAY_MAX_MM2:
                    continue
                xs = np.nonzero(labels == label)[1]
                if abs(xs.mean() - centre_x) * spacing[2] > AIRWAY_MIDLINE_MM:
                    continue
                if areas[label] > best_area:
                    best, best_area = label, areas[label]
            if best:
                previous = labels == best
                previous_area = best_area
                airway[z] = previous
                logger.debug("airway starts on canonical slice %d (%.0f mm^2)", z, best_area)
            continue
        near = ndimage.binary_dilation(previous, structure=grow)
        current = np.zeros_like(previous)
        for label in np.unique(labels[near & (labels > 0)]):
            area = areas[label]
            # The carina splits one section into two, each smaller; a section far larger than
            # the trachea has opened into lung and ends that branch.
            if area <= min(AIRWAY_MAX_MM2, AIRWAY_GROWTH * previous_area):
                current |= labels == label
        if not current.any():
            break
        airway[z] = current
        previous = current
        previous_area = float(current.sum()) * pixel_mm2
    return airway


def _split_joined(lungs: np.ndarray, centre_x: np.ndarray,
                  spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Split lungs joined by a thin bridge (bronchi below the tracked airway, the anterior junction).

    Erode until two lung-sized cores separate, then grow the cores back inside the joined mask;
    voxels neither core reaches are assigned by the midline of their slice.
    """
    boxes = ndimage.find_objects(lungs.astype(np.uint8))
    box = boxes[0] if boxes else None
    left = np.zeros_like(lungs)
    right = np.zeros_like(lungs)
    if box is None:
        return left, right
    crop = lungs[box]
    core = crop
    for iterations in range(1, SPLIT_MAX_EROSIONS + 1):
        core = ndimage.binary_erosion(core)
        labels, n = ndimage.label(core)
        if n < 2:
            continue
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        first, second = np.argsort(sizes)[::-1][:2]
        if sizes[second] < SECOND_LUNG_FRACTION * sizes[first]:
            continue
        a, b = labels == first, labels == second
        for _ in range(iterations + 1):
            grown_a = ndimage.binary_dilation(a) & crop & ~b
            grown_b = ndimage.binary_dilation(b) & crop & ~grown_a
            a, b = grown_a, grown_b
        # Patient left is +x: the core further to +x is the left lung.
        if np.nonzero(a)[2].mean() < np.nonzero(b)[2].mean():
            a, b = b, a
        left[box], right[box] = a, b
        logger.info("lungs were joined; split after %d erosion(s)", iterations)
        break
    rest = lungs & ~left & ~right
    if rest.any():
        half = round(SPLIT_WINDOW_MM / spacing[2])
        for z in np.flatnonzero(rest.any(axis=(1, 2))):
            counts = lungs[z].sum(axis=0)
            c = int(centre_x[z])
            lo, hi = max(0, c - half), min(lungs.shape[2], c + half + 1)
            cut = lo + int(np.argmin(counts[lo:hi]))
            left[z, :, cut:] |= rest[z, :, cut:]
            right[z, :, :cut] |= rest[z, :, :cut]
    return left, right


def segment_lungs(hu: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]) -> LungResult:
    air = lung_air(hu, body, spacing)
    if not air.any():
        logger.info("no lung found")
        empty = np.zeros_like(air)
        return LungResult(empty, empty.copy(), empty.copy())
    airway = track_airway(air, body, spacing)
    # Cut the lungs off the airway with a one-voxel margin so bronchial walls do not bridge them.
    lungs = air & ~ndimage.binary_dilation(airway, structure=IN_PLANE)
    labels, n = ndimage.label(lungs)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    parts = [int(label) for label in order if sizes[label] * voxel_ml >= LUNG_MIN_ML]
    if len(parts) >= 2 and sizes[parts[1]] >= SECOND_LUNG_FRACTION * sizes[parts[0]]:
        a, b = labels == parts[0], labels == parts[1]
        # Patient left is +x: the component whose centre lies further to +x is the left lung.
        if np.nonzero(a)[2].mean() > np.nonzero(b)[2].mean():
            left, right = a, b
        else:
            left, right = b, a
        # Further large pieces (a lobe cut off by a fissure at this threshold) join their side.
        for label in parts[2:]:
            piece = labels == label
            piece_x = np.nonzero(piece)[2].mean()
            if abs(piece_x - np.nonzero(left)[2].mean()) < abs(piece_x - np.nonzero(right)[2].mean()):
                left |= piece
            else:
                right |= piece
    elif parts:
        joined = np.isin(labels, parts)
        centre_x = np.empty(hu.shape[0])
        for z in range(hu.shape[0]):
            xs = np.flatnonzero(body[z].any(axis=0))
            centre_x[z] = 0.5 * (xs[0] + xs[-1]) if xs.size else hu.shape[2] / 2
        left, right = _split_joined(joined, centre_x, spacing)
    else:
        empty = np.zeros_like(air)
        return LungResult(empty, empty.copy(), airway)
    # Vessels and nodules enclosed by lung on a slice belong to the lung, as clinicians contour it.
    left = fill_holes_in_plane(left) & ~right & ~airway
    right = fill_holes_in_plane(right) & ~left & ~airway
    return LungResult(left, right, airway)
