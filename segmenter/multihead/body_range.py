"""Body-part ranges: a head runs only on the slices where its structures can be (CL-Net).

CL-Net gives every head the range of body-part-regression scores its training structures occupied
and runs the head only on the slices whose score falls in it (outside: empty masks; no overlap: the
head is skipped). We have no body-part regressor; the same gating is declared relative to a
*landmark* structure predicted by an earlier whole-image head (:class:`~segmenter.multihead.spec.RangeSpec`):
the head runs on the slices from the landmark's first slice minus ``margin_mm[0]`` to its last slice
plus ``margin_mm[1]`` along the array's z axis. :func:`learn_range_spec` takes the margins from training
label maps that hold both the landmark and the head's structures.

What it saves, counted in tiles: the ranged head's decoder runs only on the tiles of the slab that
covers its range; the encoder runs again on those tiles (the landmark must be known first), so the
saving is the decoders' work outside the range minus one encoder pass over the slab. It pays with
several or heavy ranged heads on a long scan (CL-Net: nine decoders on whole-body CT), not with one
small head on a short one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from segmenter.core.errors import ModelError
from segmenter.multihead.spec import RangeSpec

log = logging.getLogger(__name__)


def slice_range(landmark: torch.Tensor | np.ndarray, spacing_z: float, spec: RangeSpec) -> tuple[int, int] | None:
    """[start, stop) slices of the input grid the head covers, or None when the landmark is absent
    or the range lies outside the image.

    Only the landmark's largest connected component counts: a network sees scattered false
    positives of its landmark in body parts it was not trained on (a tiny abdomen model on a long
    scan found "liver" specks over 50 of 64 slices, the liver itself spanning 8), and one speck
    would stretch the range over the whole scan."""
    mask = np.asarray(torch.as_tensor(landmark).cpu().numpy(), dtype=bool)
    components, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(components.ravel())[1:]
    present = np.nonzero((components == int(np.argmax(sizes)) + 1).reshape(mask.shape[0], -1).any(1))[0]
    lo_mm = float(present.min()) * spacing_z - spec.margin_mm[0]
    hi_mm = float(present.max()) * spacing_z + spec.margin_mm[1]
    start = max(0, math.ceil(lo_mm / spacing_z - 1e-9))
    stop = min(int(mask.shape[0]), math.floor(hi_mm / spacing_z + 1e-9) + 1)
    return (start, stop) if stop > start else None


def net_range(start: int, stop: int, n_input: int, n_net: int, patch_z: int) -> tuple[int, int]:
    """The slab [start, stop) of the network grid that resampling the slices [start, stop) of the
    input grid reads (linear interpolation, half-voxel aligned), widened to at least one patch."""
    scale = n_net / n_input
    lo = max(0, math.floor((start + 0.5) * scale - 0.5) - 1)
    hi = min(n_net, math.ceil((stop - 0.5) * scale - 0.5) + 2)
    need = min(patch_z, n_net)
    if hi - lo < need:  # a slab thinner than a patch would be padded anyway: take real slices instead
        lo = max(0, min((lo + hi) // 2 - need // 2, n_net - need))
        hi = lo + need
    return lo, hi


def learn_range_spec(samples: Sequence[tuple[np.ndarray, int, Sequence[int]]], spacing_z: float, landmark: str,
                     extra_mm: float = 10.0) -> RangeSpec:
    """Margins covering, in every training case, the head's structures around the landmark, plus
    ``extra_mm``. ``samples``: (label map, landmark value, the head's structure values)."""
    below, above = [], []
    for labels, landmark_value, values in samples:
        lm = np.nonzero((labels == landmark_value).reshape(labels.shape[0], -1).any(1))[0]
        st = np.nonzero(np.isin(labels, list(values)).reshape(labels.shape[0], -1).any(1))[0]
        if lm.size == 0 or st.size == 0:
            continue
        below.append((lm.min() - st.min()) * spacing_z)
        above.append((st.max() - lm.max()) * spacing_z)
    if not below:
        raise ModelError(f"no training case holds both the range landmark {landmark!r} and the head's structures")
    spec = RangeSpec(landmark, (max(0.0, float(max(below))) + extra_mm, max(0.0, float(max(above))) + extra_mm))
    log.info("range from %s: margins %s mm (%d cases)", landmark, [round(m, 1) for m in spec.margin_mm], len(below))
    return spec
