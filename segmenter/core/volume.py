"""Volume: a 3D image with its patient-space geometry, convertible to and from SimpleITK.

Array index order is (k, j, i) = (slice, row, column), as SimpleITK's GetArrayFromImage gives it.
Geometry tuples follow SimpleITK's (x, y, z) order; ``direction`` is the 3x3 matrix row-major, its
columns being the patient-space directions of the i, j and k axes (DICOM LPS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segmenter.core.errors import VolumeError


@dataclass(frozen=True)
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise VolumeError(f"a volume needs a 3D array, got shape {self.array.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise VolumeError(f"spacing must be three positive numbers, got {self.spacing}")
        if len(self.direction) != 9:
            raise VolumeError(f"direction must have 9 values, got {len(self.direction)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(k, j, i) sizes."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(self.spacing[0] * self.spacing[1] * self.spacing[2])

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry around another array of the same shape (a label map, a mask)."""
        if array.shape != self.array.shape:
            raise VolumeError(f"array shape {array.shape} differs from the volume's {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        if image.GetDimension() != 3:
            raise VolumeError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(
            sitk.GetArrayFromImage(image),
            tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
            tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
            tuple(float(v) for v in image.GetDirection()),
        )

    @classmethod
    def read(cls, path: Path) -> Volume:
        """Read NIfTI/NRRD/MHA (a file) or a DICOM series (a folder) with SimpleITK."""
        try:
            if path.is_dir():
                reader = sitk.ImageSeriesReader()
                names = reader.GetGDCMSeriesFileNames(str(path))
                if not names:
                    raise VolumeError(f"no DICOM series found in {path}")
                reader.SetFileNames(names)
                image = reader.Execute()
            else:
                image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise VolumeError(f"cannot read {path}: {exc}") from exc
        return cls.from_sitk(image)

    def write(self, path: Path) -> None:
        try:
            sitk.WriteImage(self.to_sitk(), str(path), useCompression=True)
        except RuntimeError as exc:
            raise VolumeError(f"cannot write {path}: {exc}") from exc
