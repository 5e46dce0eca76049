"""A generated model shaped like TotalSegmentator v2's ``total`` task, and a CT series to run it on.

Used by the end-to-end test (``tests/e2e/test_total117_through_node.py``) and the benchmark
(``benchmarks/total117.py``). Every part is a real nnU-Net v2 results folder (``dataset.json``,
``plans.json``, ``fold_0/checkpoint_final.pth``, written by ``tests.nnunet_fixtures``), so
nnunetv2's ``nnUNetPredictor`` loads it as it loads TotalSegmentator's own downloads. Weights are
random (numpy's seeded generator), with every kernel's taps made equal except in the first
stage (``ModelSpec.smooth_kernels``): an untrained U-Net's transposed convolutions otherwise paint
a checkerboard and its labels come as salt and pepper (35,000 connected pieces on a small CT,
against 600 this way), which no real model produces and which would make the RTSTRUCT, not the
network, the cost being measured. The labels mean nothing; a convolution costs the same whatever
its values, so the time to compute them is real.

What is taken from where (public sources):

- Parts, their dataset names and ids (Dataset291..295), and each part's label ids and names:
  TotalSegmentator ``totalsegmentator/map_to_binary.py`` (``class_map_5_parts``,
  ``map_taskid_to_partname_ct``); 24 + 26 + 18 + 23 + 26 = 117 classes. The fast models' labels
  (Dataset297 ``total_3mm``, Dataset298 ``total_6mm``: all 117 in one model) follow
  ``class_map["total"]``, the order of ``segmenter/data/totalsegmentator_total.json``.
- Trainers: ``nnUNetTrainerNoMirroring`` for the five parts, ``nnUNetTrainer_4000epochs_NoMirroring``
  for the fast models (TotalSegmentator ``python_api.py`` and the folder names of its weight zips),
  so the checkpoints allow no mirroring axes.
- Networks: PlainConvUNet with 2 convolutions per encoder and decoder stage, 3x3x3 kernels,
  instance norm, leaky ReLU; six stages of 32-64-128-256-320-320 features for the 1.5 mm parts and
  five stages (32-64-128-256-320) for the 3 mm and 6 mm models. These are the layer shapes of the
  released checkpoints as a public conversion script rebuilds them (UnetCPP_1 / UnetCPP_2 with 25,
  27, 19, 24, 27 and 118 output channels).
- Spacing: 1.5 mm isotropic (``total``), 3 mm (``--fast``) and 6 mm (``--fastest``): TotalSegmentator's
  README and ``python_api.py`` (``resample``).
- Patch size: the released plans.json files are inside the weight zips only. 128^3 for the 1.5 mm
  parts is nnU-Net's 3d_fullres default for CT of this size (and what the project's nnU-Net
  benchmark has used); 112^3 for the 3 mm and 6 mm models is an assumption (divisible by the
  16 of four poolings). CT intensity properties are the fixture's, not TotalSegmentator's.

TotalSegmentator runs ``total`` with tile step 0.8 and no mirroring; a part folder says nothing
about the tile step, so that is an import option (``segmenter models import --tile-step 0.8``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from tests.ct_files import SeriesUids, write_ct_slice
from tests.nnunet_fixtures import ModelSpec, make_model_folder

ORGANS = ("spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
          "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
          "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea",
          "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate", "kidney_cyst_left",
          "kidney_cyst_right")
VERTEBRAE = ("sacrum", "vertebrae_S1", *(f"vertebrae_L{i}" for i in range(5, 0, -1)),
             *(f"vertebrae_T{i}" for i in range(12, 0, -1)), *(f"vertebrae_C{i}" for i in range(7, 0, -1)))
CARDIAC = ("heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
           "subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left",
           "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left", "superior_vena_cava",
           "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right",
           "iliac_vena_left", "iliac_vena_right")
MUSCLES = ("humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left", "clavicula_right",
           "femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord", "gluteus_maximus_left",
           "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right", "gluteus_minimus_left",
           "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right",
           "brain", "skull")
RIBS = (*(f"rib_left_{i}" for i in range(1, 13)), *(f"rib_right_{i}" for i in range(1, 13)), "sternum",
        "costal_cartilages")

PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Dataset291_TotalSegmentator_part1_organs_1559subj", ORGANS),
    ("Dataset292_TotalSegmentator_part2_vertebrae_1532subj", VERTEBRAE),
    ("Dataset293_TotalSegmentator_part3_cardiac_1559subj", CARDIAC),
    ("Dataset294_TotalSegmentator_part4_muscles_1559subj", MUSCLES),
    ("Dataset295_TotalSegmentator_part5_ribs_1559subj", RIBS),
)
FAST = {"3mm": "Dataset297_TotalSegmentator_total_3mm_1559subj",
        "6mm": "Dataset298_TotalSegmentator_total_6mm_1559subj"}


@dataclass(frozen=True)
class Plans:
    """The plans of one resolution: spacing, patch and U-Net stages."""

    spacing: float
    patch: tuple[int, int, int]
    features: tuple[int, ...]


PLANS = {
    "1.5mm": Plans(1.5, (128, 128, 128), (32, 64, 128, 256, 320, 320)),
    "3mm": Plans(3.0, (112, 112, 112), (32, 64, 128, 256, 320)),
    "6mm": Plans(6.0, (112, 112, 112), (32, 64, 128, 256, 320)),
}


def total_names() -> tuple[str, ...]:
    """TotalSegmentator's ``class_map["total"]`` names, label 1..117."""
    raw = json.loads(resources.files("segmenter").joinpath("data/totalsegmentator_total.json").read_text("utf-8"))
    labels = raw["labels"]
    return tuple(str(labels[str(i)]["source"]) for i in range(1, len(labels) + 1))


def _spec(dataset: str, names: tuple[str, ...], plans: Plans, trainer: str, seed: int,
          mirror_axes: tuple[int, ...] | None = None) -> ModelSpec:
    return ModelSpec(dataset.split("_", 1)[1], spacing=(plans.spacing,) * 3, patch=plans.patch,
                     n_classes=len(names) + 1, features=plans.features, folds=(0,), mirror_axes=mirror_axes, seed=seed,
                     decoder_convs=2, dataset_name=dataset, label_names=names, trainer=trainer,
                     smooth_kernels=True)


def make_total_parts(root: Path, resolution: str = "1.5mm", seed: int = 291,
                     mirror_axes: tuple[int, ...] | None = None) -> list[Path]:
    """The five ``total`` parts under ``root`` (one folder to import as one model), in
    TotalSegmentator's order; ``resolution`` other than 1.5 mm gives the same parts with the
    fast models' plans (for a quicker test, not a TotalSegmentator model). ``mirror_axes``: the
    checkpoints allow mirroring (TotalSegmentator's do not), to measure what mirroring costs."""
    return [make_model_folder(root, spec) for spec in part_specs(resolution, seed, mirror_axes)]


def make_total_fast(root: Path, resolution: str = "3mm", seed: int = 297,
                    mirror_axes: tuple[int, ...] | None = None) -> Path:
    """TotalSegmentator's ``--fast`` (3 mm) or ``--fastest`` (6 mm) model: all 117 classes in one."""
    spec = _spec(FAST[resolution], total_names(), PLANS[resolution], "nnUNetTrainer_4000epochs_NoMirroring", seed,
                 mirror_axes)
    return make_model_folder(root, spec)


def part_specs(resolution: str = "1.5mm", seed: int = 291,
               mirror_axes: tuple[int, ...] | None = None) -> list[ModelSpec]:
    plans = PLANS[resolution]
    return [_spec(d, n, plans, "nnUNetTrainerNoMirroring", seed + i, mirror_axes) for i, (d, n) in enumerate(PARTS)]


# --- a CT series -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Series:
    """A synthetic axial CT series: ``slices`` of rows x cols at ``pixel`` mm, ``step`` mm apart."""

    slices: int = 300
    rows: int = 512
    cols: int = 512
    pixel: float = 0.8
    step: float = 1.5


def phantom_slice(k: int, series: Series) -> np.ndarray:
    """HU of slice k: air, a body ellipse of soft tissue with fat, lungs in the upper third, a liver
    and kidneys in the middle, a spine and a ring of ribs: structure for the network's features to
    follow, so that its labels come in regions rather than noise."""
    rows, cols = series.rows, series.cols
    t = k / max(1, series.slices - 1)  # 0 = feet, 1 = head
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    y, x = (yy - rows / 2) / (rows / 2), (xx - cols / 2) / (cols / 2)
    img = np.full((rows, cols), -1000.0, dtype=np.float32)
    body = (y / 0.62) ** 2 + (x / 0.85) ** 2 < 1
    img[body] = -90.0  # fat
    img[(y / 0.55) ** 2 + (x / 0.78) ** 2 < 1] = 40.0  # muscle and organs
    if t > 0.6:  # thorax: two lungs
        for side in (-1, 1):
            img[((y + 0.05) / 0.38) ** 2 + ((x - side * 0.35) / 0.28) ** 2 < 1] = -850.0
    elif t > 0.3:  # abdomen: liver on the patient's right, kidneys at the back
        img[((y + 0.05) / 0.35) ** 2 + ((x + 0.3) / 0.35) ** 2 < 1] = 65.0
        for side in (-1, 1):
            img[((y - 0.2) / 0.12) ** 2 + ((x - side * 0.3) / 0.08) ** 2 < 1] = 150.0
    else:  # pelvis: bladder, hips
        img[((y + 0.1) / 0.15) ** 2 + (x / 0.18) ** 2 < 1] = 10.0
        for side in (-1, 1):
            img[((y - 0.05) / 0.18) ** 2 + ((x - side * 0.5) / 0.12) ** 2 < 1] = 500.0
    img[((y - 0.38) / 0.09) ** 2 + (x / 0.09) ** 2 < 1] = 700.0  # vertebral body
    if t > 0.4:  # ribs
        ring = np.abs((y / 0.52) ** 2 + (x / 0.75) ** 2 - 1) < 0.04
        img[ring & (np.cos(np.arctan2(y, x) * 9 + k * 0.1) > 0.3)] = 900.0
    return img


def write_ct_series(folder: Path, series: Series = Series()) -> list[Path]:
    """The phantom as an uncompressed CT series (HFS, 16-bit, rescale -1024), one file a slice."""
    folder.mkdir(parents=True, exist_ok=True)
    uids = SeriesUids.new()
    x0 = -series.cols * series.pixel / 2
    y0 = -series.rows * series.pixel / 2
    out = []
    for k in range(series.slices):
        z = -series.slices * series.step / 2 + series.step * k
        stored = np.clip(phantom_slice(k, series), -1024, 3000) + 1024
        path = folder / f"ct_{k:04d}.dcm"
        write_ct_slice(path, uids, k, (x0, y0, z), series.pixel, series.step, stored, ("Total^Phantom", "TOTAL-117"))
        out.append(path)
    return out


def with_slices(series: Series, slices: int) -> Series:
    return replace(series, slices=slices)
