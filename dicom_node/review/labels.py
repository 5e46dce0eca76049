"""A held job's kept label map read back (``pipeline.keep_label_map``): the structures, their volumes,
and the result with only some of them (what an approved subset is written from).

The names are the catalogue names after the job's template merged and selected them; the template's
renames (site ROI names) are applied by the writers, as for the job.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dicom_node.errors import ReviewError
from dicom_node.pipeline import LABELS_FILE, STRUCTURES_FILE, mask_file
from segmenter.core.errors import SegmenterError
from segmenter.core.result import LabelledStructure, SegmentationResult
from segmenter.core.volume import Volume

ML_PER_MM3 = 0.001


@dataclass(frozen=True)
class StructureVolume:
    name: str  # catalogue name
    voxels: int
    volume_ml: float


@dataclass(frozen=True)
class KeptLabels:
    labels: Volume
    structures: tuple[LabelledStructure, ...]
    model_id: str
    model_version: str
    extra_masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.structures] + list(self.extra_masks)


def read_kept(out_dir: Path) -> KeptLabels:
    """The label map, structures and masks in ``out_dir``; ReviewError when they cannot be read."""
    try:
        info = json.loads((out_dir / STRUCTURES_FILE).read_text(encoding="utf-8"))
        labels = Volume.read(out_dir / LABELS_FILE)
        structures = tuple(sorted((LabelledStructure(int(k), str(v)) for k, v in dict(info["labels"]).items()),
                                  key=lambda s: s.label))
        masks = {str(name): Volume.read(out_dir / mask_file(str(name))).array.astype(bool)
                 for name in info.get("extra_masks", [])}
        return KeptLabels(labels, structures, str(info.get("model_id", "")), str(info.get("model_version", "")),
                          masks)
    except FileNotFoundError as exc:
        raise ReviewError(f"the job's label map is gone ({Path(str(exc.filename)).name} missing)") from exc
    except (OSError, ValueError, KeyError, TypeError, SegmenterError) as exc:
        raise ReviewError(f"cannot read the job's label map: {exc}") from exc


def volumes(kept: KeptLabels) -> list[StructureVolume]:
    """Each structure's voxel count and volume in ml, in label order, the masks after."""
    counts = np.bincount(kept.labels.array.ravel().astype(np.int64),
                         minlength=max([0, *(s.label for s in kept.structures)]) + 1)
    voxel_ml = kept.labels.voxel_volume_mm3 * ML_PER_MM3
    out = [StructureVolume(s.name, int(counts[s.label]), round(float(counts[s.label]) * voxel_ml, 3))
           for s in kept.structures]
    for name, mask in kept.extra_masks.items():
        voxels = int(np.count_nonzero(mask))
        out.append(StructureVolume(name, voxels, round(voxels * voxel_ml, 3)))
    return out


def subset(kept: KeptLabels, keep: Collection[str], grid: Volume) -> SegmentationResult:
    """The result with only the ``keep`` structures, on ``grid`` (the CT's volume: the same shape, its exact
    geometry); the others' voxels are background."""
    unknown = sorted(set(keep) - set(kept.names))
    if unknown:
        raise ReviewError(f"not structures of this job: {', '.join(unknown)} (it has {', '.join(kept.names)})")
    if not keep:
        raise ReviewError("keep at least one structure (or reject the job)")
    structures = tuple(s for s in kept.structures if s.name in keep)
    lut = np.zeros(max([0, *(s.label for s in kept.structures)]) + 1, dtype=kept.labels.array.dtype)
    for s in structures:
        lut[s.label] = s.label
    try:
        labels = grid.with_array(lut[kept.labels.array])
    except SegmenterError as exc:
        raise ReviewError(f"the job's label map does not fit its CT: {exc}") from exc
    masks = {name: mask for name, mask in kept.extra_masks.items() if name in keep}
    return SegmentationResult(labels, structures, kept.model_id, kept.model_version, masks)
