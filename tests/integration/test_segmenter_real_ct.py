"""Classical segmenter on real CT: Dice against clinical contours (NSCLC LUNG1-001) and a bone label map.

What is compared, and why:

* Lungs (NSCLC ``derived/labels_from_rtstruct.nii.gz``: 3 Lung-Left, 4 Lung-Right). The clinical
  Lung-Left contour includes part of the tumour (GTV-1, label 1, 5,981 of its voxels overlapped
  Lung-Left before the label map gave them to the GTV) and the label map cannot say which GTV
  voxels were lung. So GTV voxels are left out of the comparison on both sides (an "ignore"
  region): Dice is computed over all voxels outside GTV-1. The raw Dice (GTV counted as not-lung)
  and the Dice against Lung-Left + whole GTV are logged beside it.
* Spinal cord (label 2). The clinician contoured the cord only on slices 27..110 of 134 (around
  the lungs); the cord exists above and below but is simply not drawn there. Dice is computed on
  the slices where the reference has a contour; the whole-volume Dice is logged.
* Bone (TotalSegmentator ``example_seg_fast_force_split.nii.gz`` on ``example_ct.nii.gz``, a model
  prediction used as reference): the union of sacrum and vertebrae (25-50), humerus, scapula,
  clavicula, femur and hip (69-78), skull (91), ribs (92-115) and sternum (116). Costal cartilages
  (117) are cartilage, not bone, and are left out of the reference; the Dice with them is logged.
  The reference is resampled onto the segmented grid in physical space (nearest neighbour).

Thresholds (issue): each lung >= 0.95, spinal cord >= 0.70, bone >= 0.80.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segmenter.classical.engine import EXTERNAL, segment
from segmenter.core.metrics import dice
from segmenter.core.result import SegmentationResult
from segmenter.core.volume import Volume

logger = logging.getLogger(__name__)

GTV, CORD, LUNG_LEFT, LUNG_RIGHT = 1, 2, 3, 4
BONE_IDS = [*range(25, 51), *range(69, 79), 91, *range(92, 117)]
COSTAL_CARTILAGES = 117
MAX_SECONDS = 60.0


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data missing: {path} (see ../shared/data/SOURCE.md)")
    return path


def read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(_need(folder)))
    if not names:
        pytest.fail(f"no DICOM series in {folder}")
    reader.SetFileNames(names)
    return reader.Execute()


def on_grid(reference: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """A label image resampled onto ``grid`` in physical space (nearest neighbour), as an array."""
    resampled = sitk.Resample(reference, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, reference.GetPixelID())
    return sitk.GetArrayFromImage(resampled)


@dataclass(frozen=True)
class Segmented:
    image: sitk.Image
    result: SegmentationResult
    reference: np.ndarray
    seconds: float


def _run(image: sitk.Image, reference: sitk.Image) -> Segmented:
    volume = Volume.from_sitk(image)
    started = time.perf_counter()
    result = segment(volume)
    seconds = time.perf_counter() - started
    return Segmented(image, result, on_grid(reference, result.labels.to_sitk()), seconds)


@pytest.fixture(scope="module")
def nsclc(shared_data: Path) -> Segmented:
    root = shared_data / "ct" / "nsclc_lung1_001"
    labels = json.loads(_need(root / "derived" / "labels.json").read_text())
    assert {int(k): v for k, v in labels.items() if int(k)} == {1: "GTV-1", 2: "Spinal-Cord", 3: "Lung-Left",
                                                                4: "Lung-Right"}, labels
    reference = sitk.ReadImage(str(_need(root / "derived" / "labels_from_rtstruct.nii.gz")))
    segmented = _run(read_series(root / "ct"), reference)
    logger.info("NSCLC 512x512x134 segmented in %.1f s", segmented.seconds)
    print(f"NSCLC segmentation time: {segmented.seconds:.1f} s")
    return segmented


@pytest.fixture(scope="module")
def nsclc_ffs(shared_data: Path) -> Segmented:
    """The same CT stored feet-first: i and k reversed, the direction matrix saying so."""
    root = shared_data / "ct" / "nsclc_lung1_001"
    image = read_series(root / "ct")
    flipped = sitk.Flip(image, [True, False, True])  # keeps physical positions, negates directions
    direction = np.asarray(flipped.GetDirection()).reshape(3, 3)
    assert direction[0, 0] < 0 and direction[2, 2] < 0
    reference = sitk.ReadImage(str(root / "derived" / "labels_from_rtstruct.nii.gz"))
    return _run(flipped, reference)


@pytest.fixture(scope="module")
def abdomen(shared_data: Path) -> Segmented:
    root = shared_data / "nifti" / "totalseg_example"
    reference = sitk.ReadImage(str(_need(root / "example_seg_fast_force_split.nii.gz")))
    image = sitk.ReadImage(str(_need(root / "example_ct.nii.gz")))
    return _run(image, reference)


def _lung_dice(segmented: Segmented) -> dict[str, float]:
    ref, result = segmented.reference, segmented.result
    care = ref != GTV
    out = {}
    for name, label in (("Lung_L", LUNG_LEFT), ("Lung_R", LUNG_RIGHT)):
        predicted = result.mask(name)
        out[name] = dice(predicted & care, ref == label)
        out[name + " raw"] = dice(predicted, ref == label)
    out["Lung_L with whole GTV"] = dice(result.mask("Lung_L"), (ref == LUNG_LEFT) | (ref == GTV))
    return out


def test_lungs_dice_at_least_095(nsclc: Segmented) -> None:
    scores = _lung_dice(nsclc)
    print("NSCLC lung Dice (GTV voxels ignored):", {k: round(v, 4) for k, v in scores.items()})
    assert scores["Lung_L"] >= 0.95, scores
    assert scores["Lung_R"] >= 0.95, scores


def test_spinal_cord_dice_at_least_070_on_contoured_slices(nsclc: Segmented) -> None:
    ref = nsclc.reference == CORD
    contoured = np.flatnonzero(ref.any(axis=(1, 2)))
    predicted = nsclc.result.mask("SpinalCord")
    window = np.zeros_like(ref)
    window[contoured[0]:contoured[-1] + 1] = True
    on_slices = dice(predicted & window, ref)
    print(f"NSCLC spinal cord Dice on reference slices {contoured[0]}..{contoured[-1]}: {on_slices:.4f}; "
          f"whole volume: {dice(predicted, ref):.4f}")
    assert on_slices >= 0.70
    # The cord is found over (at least) the whole contoured length.
    assert predicted[contoured].any(axis=(1, 2)).all()


def test_left_lung_is_patient_left(nsclc: Segmented) -> None:
    volume = nsclc.result.labels
    direction = np.asarray(volume.direction).reshape(3, 3)

    def centre_x(mask: np.ndarray) -> float:
        k, j, i = np.nonzero(mask)
        idx = np.array([i.mean(), j.mean(), k.mean()]) * np.asarray(volume.spacing)
        return float((np.asarray(volume.origin) + direction @ idx)[0])

    assert centre_x(nsclc.result.mask("Lung_L")) > centre_x(nsclc.result.mask("Lung_R"))


def test_trachea_runs_down_the_midline_and_stays_out_of_the_lungs(nsclc: Segmented) -> None:
    trachea = nsclc.result.mask("Trachea")
    slices = np.flatnonzero(trachea.any(axis=(1, 2)))
    # From the top of the scan (neck, slice 133) down to about the carina.
    assert slices[-1] == trachea.shape[0] - 1 and slices[-1] - slices[0] >= 20, slices
    area_mm2 = trachea[slices[-10:]].sum(axis=(1, 2)) * nsclc.result.labels.spacing[0] * nsclc.result.labels.spacing[1]
    assert ((area_mm2 > 50) & (area_mm2 < 700)).all(), area_mm2
    _, _, i = np.nonzero(trachea[slices[-10:]])
    assert abs(i.mean() - trachea.shape[2] / 2) * nsclc.result.labels.spacing[0] < 30
    # The reference lungs hardly touch our airway (its lowest bronchi may reach the hilum).
    ref_lungs = (nsclc.reference == LUNG_LEFT) | (nsclc.reference == LUNG_RIGHT)
    assert (trachea & ref_lungs).sum() < 0.1 * trachea.sum()


def test_external_contains_every_structure(nsclc: Segmented) -> None:
    external = nsclc.result.mask(EXTERNAL)
    assert not ((nsclc.result.labels.array > 0) & ~external).any()
    # And the clinical structures too: the outline is the patient.
    assert not ((nsclc.reference > 0) & ~external).any()


def test_couch_is_not_in_external(nsclc: Segmented) -> None:
    hu = sitk.GetArrayFromImage(nsclc.image)
    dense = hu > -500
    cord_rows = np.nonzero(nsclc.reference == CORD)[1]
    start = int(cord_rows.mean())
    couch = np.zeros_like(dense)
    for k in range(dense.shape[0]):
        # Walk posteriorly (+j, HFS) from the cord to the first row of pure air: below it, the couch.
        rows = dense[k].any(axis=1)
        gap = start + int(np.argmin(rows[start:]))
        if not rows[gap]:
            couch[k, gap:] = dense[k, gap:]
    assert couch.sum() > 50_000, "the couch of this scan lies behind an air gap below the back"
    external = nsclc.result.mask(EXTERNAL)
    assert not (external & couch).any(), f"{int((external & couch).sum())} couch voxels in External"


def test_runtime_is_well_under_a_minute(nsclc: Segmented) -> None:
    assert nsclc.seconds < MAX_SECONDS, f"{nsclc.seconds:.1f} s"


def test_feet_first_storage_gives_the_same_lungs(nsclc_ffs: Segmented) -> None:
    scores = _lung_dice(nsclc_ffs)
    print("NSCLC stored FFS, lung Dice:", {k: round(v, 4) for k, v in scores.items()})
    assert scores["Lung_L"] >= 0.95 and scores["Lung_R"] >= 0.95, scores


def test_bone_dice_at_least_080(abdomen: Segmented) -> None:
    predicted = abdomen.result.mask("Bone")
    reference = np.isin(abdomen.reference, BONE_IDS)
    with_cartilage = np.isin(abdomen.reference, [*BONE_IDS, COSTAL_CARTILAGES])
    score = dice(predicted, reference)
    print(f"TotalSegmentator example bone Dice: {score:.4f} "
          f"(with costal cartilages: {dice(predicted, with_cartilage):.4f})")
    assert score >= 0.80
    external = abdomen.result.mask(EXTERNAL)
    assert not ((abdomen.result.labels.array > 0) & ~external).any()
