"""SOARS-style stratified cascade: anchors first, small & hard structures in crops placed from them.

Heads carry a ``group`` (``anchor`` / ``mid`` / ``small``). Anchor and mid heads run over the whole
image on the model's grid. A ``small`` head with a :class:`~segmenter.multihead.spec.CropSpec` runs on a
crop of the *input* image resampled to the crop's finer spacing; the crop is centred at the anchor
structure's predicted centroid plus an offset learnt from training labels (:func:`learn_crop_spec`),
and its probabilities are resampled back into the crop box on the input grid (background outside).

The SOARS papers do not publish crop sizes or the S&H detector; this is the placement their text
describes ("segment S&H OARs in regions cropped around the anchors' result"), with the offset and
size taken from the training labels. All geometry is along the array axes (z, y, x) in mm, voxel
centres at ``index * spacing`` (the origin cancels out: crops are cut from and pasted into the same grid).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segmenter.core.errors import ModelError
from segmenter.multihead.spec import CropSpec

log = logging.getLogger(__name__)

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class CropBox:
    start_mm: Triple
    shape: tuple[int, int, int]
    spacing: Triple


def centroid_mm(mask: np.ndarray | torch.Tensor, spacing: Sequence[float]) -> Triple | None:
    """Centre of mass of a boolean mask in mm, or None when the mask is empty."""
    m = torch.as_tensor(mask)
    idx = torch.nonzero(m)
    if idx.numel() == 0:
        return None
    c = idx.double().mean(0)
    return (float(c[0]) * spacing[0], float(c[1]) * spacing[1], float(c[2]) * spacing[2])


def crop_box(spec: CropSpec, anchor_centroid_mm: Sequence[float], divisor: int = 1) -> CropBox:
    """The crop around ``anchor + offset``, its voxel counts rounded up to a multiple of ``divisor``."""
    shape = []
    start = []
    for c, off, size, sp in zip(anchor_centroid_mm, spec.offset_mm, spec.size_mm, spec.spacing, strict=True):
        n = int(np.ceil(size / sp / divisor)) * divisor
        shape.append(n)
        start.append(c + off - (n - 1) * sp / 2)
    return CropBox((start[0], start[1], start[2]), (shape[0], shape[1], shape[2]), spec.spacing)


def _grid(source_shape: Sequence[int], source_spacing: Sequence[float], start_mm: Sequence[float],
          shape: Sequence[int], spacing: Sequence[float], device: torch.device) -> torch.Tensor:
    """grid_sample grid (1, *shape, 3) sampling the source grid at start + index * spacing."""
    axes = []
    for n_src, sp_src, s, n, sp in zip(source_shape, source_spacing, start_mm, shape, spacing, strict=True):
        idx = (s + torch.arange(n, dtype=torch.float64, device=device) * sp) / sp_src
        axes.append((2 * idx / max(n_src - 1, 1) - 1).float())
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1).unsqueeze(0)  # grid_sample wants (x, y, z)


def sample_box(data: torch.Tensor, spacing: Sequence[float], box: CropBox, mode: str = "bilinear",
               padding: str = "border") -> torch.Tensor:
    """Cut ``box`` out of ``data`` (C, Z, Y, X) on ``spacing``; returns (C, *box.shape)."""
    grid = _grid(data.shape[1:], spacing, box.start_mm, box.shape, box.spacing, data.device)
    out = F.grid_sample(data.unsqueeze(0).float(), grid, mode=mode, padding_mode=padding, align_corners=True)
    return out[0]


def paste_probs(probs: torch.Tensor, box: CropBox, shape: Sequence[int], spacing: Sequence[float]) -> torch.Tensor:
    """Crop probabilities (C, *box.shape; channel 0 = background) on the target grid (C, *shape):
    resampled inside the box, background (1, 0, ...) outside."""
    # where the target voxels fall in the crop's index space
    axes = []
    inside = []
    for n_src, sp_src, s, n, sp in zip(box.shape, box.spacing, box.start_mm, shape, spacing, strict=True):
        idx = (torch.arange(n, dtype=torch.float64, device=probs.device) * sp - s) / sp_src
        inside.append((idx >= 0) & (idx <= n_src - 1))
        axes.append((2 * idx / max(n_src - 1, 1) - 1).float())
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([xx, yy, zz], dim=-1).unsqueeze(0)
    out = F.grid_sample(probs.unsqueeze(0).float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    mask = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    background = torch.zeros_like(out)
    background[0] = 1.0
    return torch.where(mask.unsqueeze(0), out, background)


def resample_shape(data: torch.Tensor, shape: Sequence[int], mode: str = "trilinear") -> torch.Tensor:
    """(C, Z, Y, X) to (C, *shape) with voxel centres aligned at both ends' half-voxel borders."""
    if tuple(data.shape[1:]) == tuple(shape):
        return data
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(data.unsqueeze(0).float(), size=tuple(shape), mode=mode, **kwargs)[0]


def learn_crop_spec(samples: Sequence[tuple[np.ndarray, int, int]], spacing: Sequence[float], anchor: str,
                    crop_spacing: Sequence[float], margin_mm: float = 4.0) -> CropSpec:
    """Offset and size of a crop from training label maps.

    ``samples`` are (label map, anchor label value, target label value) on ``spacing``. The offset is
    the mean of (target centroid - anchor centroid); the size covers every case's target bounding
    box around the predicted centre, plus ``margin_mm`` on each side.
    """
    offsets = []
    boxes = []
    for labels, anchor_value, target_value in samples:
        a = centroid_mm(labels == anchor_value, spacing)
        t = centroid_mm(labels == target_value, spacing)
        if a is None or t is None:
            continue
        offsets.append(np.subtract(t, a))
        idx = np.argwhere(labels == target_value)
        lo = idx.min(0) * np.asarray(spacing)
        hi = idx.max(0) * np.asarray(spacing)
        boxes.append((np.asarray(a), lo, hi))
    if not offsets:
        raise ModelError(f"no training case holds both the anchor {anchor!r} and the target structure")
    offset = np.mean(offsets, axis=0)
    half = np.zeros(3)
    for anchor_at, lo, hi in boxes:
        centre = anchor_at + offset
        half = np.maximum(half, np.maximum(centre - lo, hi - centre))
    size = 2 * (half + margin_mm) + np.asarray(crop_spacing)
    log.info("crop from %s: offset %s mm, size %s mm (%d cases)", anchor, np.round(offset, 1), np.round(size, 1),
             len(offsets))
    return CropSpec(anchor=anchor, offset_mm=(float(offset[0]), float(offset[1]), float(offset[2])),
                    size_mm=(float(size[0]), float(size[1]), float(size[2])),
                    spacing=(float(crop_spacing[0]), float(crop_spacing[1]), float(crop_spacing[2])))
