"""Body outline (without the couch) and bones for the classical segmenter.

All functions take canonical arrays (see :mod:`segmenter.classical.orient`): (z, y, x) with
indices increasing towards superior, posterior and patient left, HU values, spacing in mm.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

logger = logging.getLogger(__name__)

# Halfway between air (-1000 HU) and fat (-100 HU): the skin surface, robust to noise and blur.
BODY_HU = -500.0
# Couch tops, mattresses and immobilisation shells are a few millimetres thick; an in-plane
# opening of this radius cuts them off the patient, while every body part survives it.
COUCH_OPENING_MM = 6.0
# Disconnected body parts (an arm beside the trunk) are kept when at least this fraction of the
# largest part; couch rails and table legs that survive the opening are far smaller.
KEEP_FRACTION = 0.05
# A hole in the tissue is inside the patient when at least this share of its wall is body.
BODY_WALL_FRACTION = 0.7
# Smaller holes cannot hide an airway; skipping them keeps the check cheap.
MIN_ENCLOSED_MM2 = 20.0
# Grid (mm) on which the couch-cutting opening runs.
OPENING_GRID_MM = 2.0
# Bone is every voxel above BONE_HU in a connected piece that somewhere reaches BONE_SEED_HU
# (hysteresis): trabecular bone and partial-volume cortex lie at 120-250 HU, while isolated soft
# tissue and contrast-filled vessels that pass 120 HU rarely contain cortical-bone values.
BONE_HU = 120.0
BONE_SEED_HU = 250.0
# Marrow cavities enclosed by cortex are filled when smaller than this (femoral shaft, vertebral
# body); larger enclosed areas are the vertebral canal, the pelvis or the chest, not bone.
BONE_HOLE_MAX_MM2 = 1200.0
BONE_MIN_MM3 = 100.0

IN_PLANE = np.array([[[0, 0, 0], [0, 0, 0], [0, 0, 0]],
                     [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                     [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], dtype=bool)


def fill_holes_in_plane(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (axial): a lung or the trachea is enclosed on its slice, not in 3D."""
    background = ~mask
    labels, _ = ndimage.label(background, structure=IN_PLANE)
    edge = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                                     labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    outside = np.isin(labels, edge[edge > 0])
    return ~outside


def _opening_radius(spacing: tuple[float, float, float], step: int) -> list[int]:
    """A SimpleITK (x, y, z) radius in voxels for an in-plane disc of COUCH_OPENING_MM."""
    return [max(1, round(COUCH_OPENING_MM / (spacing[2] * step))),
            max(1, round(COUCH_OPENING_MM / (spacing[1] * step))), 0]


def body_mask(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The patient's outline: dense voxels, cut off the couch by an in-plane opening, holes filled."""
    dense = hu > BODY_HU
    # The opening only decides which tissue is patient; a ~2 mm grid is ample for that and
    # several times faster than the full grid.
    step = max(1, int(OPENING_GRID_MM // max(spacing[1], spacing[2])))
    coarse = dense[:, ::step, ::step]
    image = sitk.GetImageFromArray(coarse.astype(np.uint8))
    image.SetSpacing((spacing[2] * step, spacing[1] * step, spacing[0]))
    opened = sitk.BinaryMorphologicalOpening(image, _opening_radius(spacing, step), sitk.sitkBall)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(opened, True), sortByObjectSize=True)
    labels = sitk.GetArrayFromImage(components)
    sizes = np.bincount(labels.ravel())
    if len(sizes) < 2:
        logger.warning("no body found (nothing denser than %s HU)", BODY_HU)
        return np.zeros_like(dense)
    keep = np.flatnonzero(sizes[1:] >= KEEP_FRACTION * sizes[1]) + 1
    kept = np.isin(labels, keep)
    if step > 1:
        kept = np.repeat(np.repeat(kept, step, axis=1), step, axis=2)[:, :dense.shape[1], :dense.shape[2]]
    body = kept & dense
    # The opening rounds the skin and the coarse grid blurs it by a cell; dense voxels touching
    # the kept body come back (too few steps to re-attach a couch that lies a gap away).
    body |= dense & ndimage.binary_dilation(body, structure=IN_PLANE, iterations=step)
    logger.debug("body: %d part(s) kept of %d", len(keep), len(sizes) - 1)
    filled = fill_holes_in_plane(body)
    enclosed = _enclosed_by_body(dense, body, filled, spacing)
    if enclosed.any():
        slices = np.flatnonzero(enclosed.any(axis=(1, 2)))
        filled[slices] = fill_holes_in_plane(filled[slices] | enclosed[slices])
    return filled


def _enclosed_by_body(dense: np.ndarray, body: np.ndarray, filled: np.ndarray,
                      spacing: tuple[float, float, float]) -> np.ndarray:
    """Holes of ``dense`` that the body does not enclose but mostly walls, with their walls.

    The opening also cuts thin tissue such as the skin in front of the trachea at the sternal
    notch, which would open the airway to outside air. A hole of the unopened tissue whose wall
    is mostly body is inside the patient; a hole walled by couch (its hollow top, the gap under
    the back) is not.
    """
    out = np.zeros_like(dense)
    new = fill_holes_in_plane(dense) & ~dense & ~filled
    labels, _ = ndimage.label(new, structure=IN_PLANE)
    reach = max(1, round(COUCH_OPENING_MM / spacing[2]))
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        z = box[0].start
        y0, y1 = max(0, box[1].start - reach), box[1].stop + reach
        x0, x1 = max(0, box[2].start - reach), box[2].stop + reach
        hole = labels[z, y0:y1, x0:x1] == index
        if hole.sum() * spacing[1] * spacing[2] < MIN_ENCLOSED_MM2:
            continue
        ring = ndimage.binary_dilation(hole) & ~hole
        if (ring & body[z, y0:y1, x0:x1]).sum() < BODY_WALL_FRACTION * ring.sum():
            continue
        # The thin wall the opening removed is the tissue right beside such a hole.
        near = ndimage.binary_dilation(hole, iterations=reach)
        out[z, y0:y1, x0:x1] |= hole | (dense[z, y0:y1, x0:x1] & near)
    return out


def bone_mask(hu: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float],
              exclude: np.ndarray | None = None) -> np.ndarray:
    """Bones: dense voxels inside the body with their small enclosed marrow cavities.

    ``exclude`` (the vertebral canal) is never bone even when the arch encloses it.
    """
    candidate = (hu > BONE_HU) & body
    labels, n = ndimage.label(candidate)
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[np.unique(labels[(hu > BONE_SEED_HU) & candidate])] = True
    seeded[0] = False
    dense = seeded[labels]
    # Close one-voxel gaps in thin cortex so that its cavity counts as enclosed.
    closed = ndimage.binary_closing(dense, structure=IN_PLANE, iterations=1) | dense
    holes = fill_holes_in_plane(closed) & ~closed
    hole_labels, _ = ndimage.label(holes, structure=IN_PLANE)
    area_mm2 = np.bincount(hole_labels.ravel()) * spacing[1] * spacing[2]
    small = area_mm2 < BONE_HOLE_MAX_MM2
    small[0] = False
    bone: np.ndarray = closed | small[hole_labels]
    if exclude is not None:
        bone &= ~exclude
    labels, n = ndimage.label(bone)
    if n:
        volume_mm3 = np.bincount(labels.ravel()) * float(np.prod(spacing))
        keep = volume_mm3 >= BONE_MIN_MM3
        keep[0] = False
        bone = keep[labels]
    return bone
