"""Reorientation to a canonical patient-aligned array for the classical segmenter.

The classical rules speak of anatomy ("posterior to the vertebral body", "patient left"), so they
run on an array whose axes are (z, y, x) of DICOM LPS with every index increasing towards
superior, posterior and patient left. Any direction matrix whose axes lie near the patient axes
(HFS, FFS, HFP, FFP, decubitus, small obliquity) maps onto it by a transpose and flips, which are
exact and reversible: results go back to the input grid voxel for voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segmenter.core.errors import VolumeError
from segmenter.core.volume import Volume

# An axis more than ~35 degrees off every patient axis has no meaningful "nearest" axis.
_MIN_COSINE = 0.8


@dataclass(frozen=True)
class Canonical:
    """How an input array maps onto the canonical (z superior, y posterior, x left) array."""

    perm: tuple[int, int, int]  # np.transpose axes: canonical axis c takes input array axis perm[c]
    flips: tuple[bool, bool, bool]  # per canonical axis, after the transpose
    spacing: tuple[float, float, float]  # canonical (z, y, x) spacing in mm

    @classmethod
    def of(cls, volume: Volume) -> Canonical:
        d = np.asarray(volume.direction, dtype=float).reshape(3, 3)
        perm = [-1, -1, -1]
        flips = [False, False, False]
        spacing = [0.0, 0.0, 0.0]
        for n in range(3):  # image axis i, j, k = array axis 2, 1, 0
            column = d[:, n]
            p = int(np.argmax(np.abs(column)))  # patient axis x, y, z
            if abs(column[p]) < _MIN_COSINE:
                raise VolumeError(f"image axis {n} direction {column.round(3).tolist()} is too oblique for the "
                                  "classical segmenter")
            c = 2 - p  # canonical array axis of patient axis p
            if perm[c] != -1:
                raise VolumeError(f"direction matrix {volume.direction} maps two image axes onto one patient axis")
            perm[c] = 2 - n
            flips[c] = bool(column[p] < 0)
            spacing[c] = float(volume.spacing[n])
        return cls((perm[0], perm[1], perm[2]), (flips[0], flips[1], flips[2]), (spacing[0], spacing[1], spacing[2]))

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.perm)
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        return np.ascontiguousarray(out)

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        out = array
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        return np.ascontiguousarray(np.transpose(out, np.argsort(self.perm)))
