"""What every segmentation engine returns: a label map on the input grid plus its structures."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segmenter.core.volume import Volume


@dataclass(frozen=True)
class LabelledStructure:
    """One label value in a label map and the catalogue structure it stands for."""

    label: int
    name: str  # catalogue (TG-263) name, e.g. "Lung_L"


@dataclass(frozen=True)
class SegmentationResult:
    """Label map (uint8/uint16, same shape and geometry as the input volume) and its structures.

    Structures may overlap in reality (body contains lungs); a label map holds one label per
    voxel, so containing structures (the body outline) come as separate masks in ``extra_masks``
    keyed by catalogue name, each a boolean array of the volume's shape.
    """

    labels: Volume
    structures: tuple[LabelledStructure, ...]
    model_id: str
    model_version: str
    extra_masks: dict[str, np.ndarray] = field(default_factory=dict)

    def mask(self, name: str) -> np.ndarray:
        """Boolean mask of one structure, from the label map or the extra masks."""
        if name in self.extra_masks:
            return self.extra_masks[name]
        for s in self.structures:
            if s.name == name:
                mask: np.ndarray = self.labels.array == s.label
                return mask
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.structures] + list(self.extra_masks)
