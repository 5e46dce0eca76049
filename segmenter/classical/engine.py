"""The built-in, weight-free classical segmenter for CT in HU.

Structures: body outline without the couch (External, an extra mask because it contains the
others), left and right lung, trachea with the main bronchi, spinal cord (the vertebral canal's
soft tissue), and bone. It needs no model files and runs in seconds on a CPU, so a node can
deliver a first contour set for any thorax or abdomen CT.

Anatomy is decided in patient coordinates: the input is reoriented to a canonical array (see
:mod:`segmenter.classical.orient`) so that "left" means DICOM LPS +x whatever the patient position
(HFS, FFS, prone) or the storage order of the file; results are mapped back onto the input grid.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from segmenter import __version__
from segmenter.classical.body import body_mask, bone_mask
from segmenter.classical.cord import segment_cord
from segmenter.classical.lungs import segment_lungs
from segmenter.classical.orient import Canonical
from segmenter.core.errors import VolumeError
from segmenter.core.result import LabelledStructure, SegmentationResult
from segmenter.core.volume import Volume

logger = logging.getLogger(__name__)

MODEL_ID = "builtin-classical"
MODEL_VERSION = __version__

LUNG_L, LUNG_R, TRACHEA, SPINAL_CORD, BONE = 1, 2, 3, 4, 5
STRUCTURES = (
    LabelledStructure(LUNG_L, "Lung_L"),
    LabelledStructure(LUNG_R, "Lung_R"),
    LabelledStructure(TRACHEA, "Trachea"),
    LabelledStructure(SPINAL_CORD, "SpinalCord"),
    LabelledStructure(BONE, "Bone"),
)
EXTERNAL = "External"


def _hu(volume: Volume) -> np.ndarray:
    if volume.array.dtype.kind not in "iuf":
        raise VolumeError(f"the classical segmenter needs a numeric CT volume, got dtype {volume.array.dtype}")
    hu = volume.array.astype(np.float32, copy=False)
    low, high = float(hu.min()), float(hu.max())
    # Every CT in HU holds air (-1000) and soft tissue (0..100); anything else is not HU.
    if low > -500 or high < 0:
        logger.warning("value range %.0f..%.0f does not look like CT in HU; the contours will be poor", low, high)
    return hu


def segment(volume: Volume) -> SegmentationResult:
    """Segment a CT volume in HU; the label map and the External mask lie on the input grid."""
    started = time.perf_counter()
    canonical = Canonical.of(volume)
    hu = canonical.to_canonical(_hu(volume))
    spacing = canonical.spacing
    logger.info("classical segmenter: %s voxels, canonical spacing %s mm", "x".join(map(str, hu.shape)),
                tuple(round(s, 3) for s in spacing))

    step = time.perf_counter()
    body = body_mask(hu, spacing)
    logger.info("body outline: %.1f ml in %.1f s", body.sum() * np.prod(spacing) / 1000, time.perf_counter() - step)

    step = time.perf_counter()
    lungs = segment_lungs(hu, body, spacing)
    logger.info("lungs: left %.0f ml, right %.0f ml, airway %.1f ml in %.1f s",
                lungs.left.sum() * np.prod(spacing) / 1000,
                lungs.right.sum() * np.prod(spacing) / 1000, lungs.airway.sum() * np.prod(spacing) / 1000,
                time.perf_counter() - step)

    step = time.perf_counter()
    cord = segment_cord(hu, body, spacing)
    logger.info("spinal cord: %d slices in %.1f s", int(cord.any(axis=(1, 2)).sum()), time.perf_counter() - step)

    step = time.perf_counter()
    # The canal is never bone, even where the arch encloses it.
    bone = bone_mask(hu, body, spacing, exclude=cord)
    logger.info("bone: %.0f ml in %.1f s", bone.sum() * np.prod(spacing) / 1000, time.perf_counter() - step)

    labels = np.zeros(hu.shape, dtype=np.uint8)
    # Later assignments win; the masks hardly overlap (HU ranges differ), the order only settles edges.
    labels[bone] = BONE
    labels[cord] = SPINAL_CORD
    labels[lungs.left] = LUNG_L
    labels[lungs.right] = LUNG_R
    labels[lungs.airway] = TRACHEA
    # The outline contains every other structure by definition.
    external = body | (labels > 0)

    result = SegmentationResult(
        labels=volume.with_array(canonical.from_canonical(labels)),
        structures=STRUCTURES,
        model_id=MODEL_ID,
        model_version=MODEL_VERSION,
        extra_masks={EXTERNAL: canonical.from_canonical(external)},
    )
    logger.info("classical segmentation done in %.1f s", time.perf_counter() - started)
    return result
