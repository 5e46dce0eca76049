"""Running the model-level steps of ``model_steps``: pre steps on the input volume (with their exact
inverses for the label map), post steps on the label map, and the crop region of a dependent part.

Array order is the Volume's (k, j, i); step parameters given per axis are in (i, j, k) order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from segmenter.core.errors import ModelError
from segmenter.models.steps import (
    AXIS_LETTERS,
    Crop,
    KeepLargestComponent,
    PostStep,
    PreStep,
    RemoveFragments,
    Reorient,
    Resample,
)
from segmenter.nnunet.preprocess import zoom_separable

if TYPE_CHECKING:  # SimpleITK stays out of the import path of headless GPU workers
    from segmenter.core.result import LabelledStructure
    from segmenter.core.volume import Volume

log = logging.getLogger(__name__)

Undo = Callable[[np.ndarray], np.ndarray]
PartMaps = dict[str, tuple[np.ndarray, dict[int, str | None]]]


def _direction(volume: Volume) -> np.ndarray:
    """3x3, columns = LPS directions of the i, j, k axes."""
    return np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)


def closest_axes(direction: np.ndarray) -> tuple[list[int], list[int]]:
    """For each index axis, the world axis (0 L, 1 P, 2 S) it runs closest to and the sign.

    Greedy on the largest remaining |cosine| (as nibabel's io_orientation does for oblique scans), so
    two index axes never claim the same world axis."""
    m = np.abs(direction).copy()
    world, sign = [0, 0, 0], [1, 1, 1]
    for _ in range(3):
        w, a = np.unravel_index(int(np.argmax(m)), m.shape)
        world[a], sign[a] = int(w), 1 if direction[w, a] >= 0 else -1
        m[w, :] = -1
        m[:, a] = -1
    return world, sign


def _reorient(volume: Volume, step: Reorient) -> tuple[Volume, Undo]:
    from segmenter.core.volume import Volume

    d = _direction(volume)
    world, sign = closest_axes(d)
    perm, flip = [0, 0, 0], [False, False, False]  # new index axis b <- old index axis perm[b]
    for b, letter in enumerate(step.to):
        w, s = AXIS_LETTERS[letter]
        perm[b] = world.index(w)
        flip[b] = sign[perm[b]] != s
    order = [2 - perm[2 - t] for t in range(3)]  # array axes (k, j, i) are index axes reversed
    flip_axes = tuple(t for t in range(3) if flip[2 - t])
    array = np.flip(np.transpose(volume.array, order), flip_axes) if flip_axes else np.transpose(volume.array, order)
    sizes_ijk = volume.array.shape[::-1]
    origin = np.asarray(volume.origin, dtype=np.float64)
    columns = []
    for b in range(3):
        a = perm[b]
        col = d[:, a] * (-1 if flip[b] else 1)
        if flip[b]:  # the new first voxel is the old last one along this axis
            origin = origin + d[:, a] * volume.spacing[a] * (sizes_ijk[a] - 1)
        columns.append(col)
    spacing = (volume.spacing[perm[0]], volume.spacing[perm[1]], volume.spacing[perm[2]])
    new = Volume(np.ascontiguousarray(array), spacing, (float(origin[0]), float(origin[1]), float(origin[2])),
                 tuple(float(v) for v in np.stack(columns, axis=1).ravel()))
    inverse = np.argsort(order)
    log.debug("reorient to %s: array axes %s, flipped %s", step.to, order, flip_axes)

    def undo(labels: np.ndarray) -> np.ndarray:
        back = np.flip(labels, flip_axes) if flip_axes else labels
        return np.ascontiguousarray(np.transpose(back, inverse))

    return new, undo


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index per output sample of scipy's ``zoom(order=0)`` from n_in to n_out samples (the
    call CADS restores its masks with), along one axis: order 0 is separable."""
    idx = ndimage.zoom(np.arange(n_in, dtype=np.float64), n_out / n_in, order=0)
    if idx.shape != (n_out,):
        raise ModelError(f"internal: zoom gave {idx.shape[0]} samples, wanted {n_out}")
    indices: np.ndarray = idx.astype(np.int64)
    return indices


def _resample(volume: Volume, step: Resample) -> tuple[Volume, Undo]:
    from segmenter.core.volume import Volume

    old_shape = tuple(int(n) for n in volume.array.shape)
    spacing_kji = step.spacing_mm[::-1]
    old_spacing_kji = volume.spacing[::-1]
    # scipy's zoom(image, old/new spacing) output shape, as CADS calls it
    shape = tuple(round(n * o / s) for n, o, s in zip(old_shape, old_spacing_kji, spacing_kji, strict=True))
    if min(shape) < 1:
        raise ModelError(f"resampling {old_shape} to {step.spacing_mm} mm leaves an empty axis")
    data = zoom_separable(volume.array, shape, step.order, mode="constant", grid_mode=False)
    if step.integer:
        np.trunc(data, out=data)  # CADS stores the resampled CT as int32
    world, sign = closest_axes(_direction(volume))
    snapped = np.zeros((3, 3))
    for a in range(3):  # rotation removed: each axis along the world axis it was closest to
        snapped[world[a], a] = sign[a]
    new = Volume(data.astype(np.float32), tuple(float(s) for s in step.spacing_mm),  # type: ignore[arg-type]
                 volume.origin, tuple(float(v) for v in snapped.ravel()))
    index = [_nearest_indices(s, o) for s, o in zip(shape, old_shape, strict=True)]
    log.debug("resample %s at %s mm -> %s at %s mm", old_shape, volume.spacing, shape, step.spacing_mm)

    def undo(labels: np.ndarray) -> np.ndarray:
        if labels.shape != shape:
            raise ModelError(f"internal: label map {labels.shape} is not on the resampled grid {shape}")
        return np.ascontiguousarray(labels[np.ix_(*index)])

    return new, undo


def apply_pre(volume: Volume, steps: Sequence[PreStep]) -> tuple[Volume, list[Undo]]:
    """The working volume the parts run on, and the inverses (to apply in reverse order)."""
    undos: list[Undo] = []
    for step in steps:
        volume, undo = _reorient(volume, step) if isinstance(step, Reorient) else _resample(volume, step)
        undos.append(undo)
    return volume, undos


def restore(labels: np.ndarray, undos: Sequence[Undo]) -> np.ndarray:
    for undo in reversed(undos):
        labels = undo(labels)
    return labels


_STRUCTURES = {6: 1, 18: 2, 26: 3}


def _components(labels: np.ndarray, label: int, box: tuple[slice, ...], connectivity: int,
                ) -> tuple[np.ndarray, np.ndarray]:
    comp, n = ndimage.label(labels[box] == label, ndimage.generate_binary_structure(3, _STRUCTURES[connectivity]))
    return comp, np.bincount(comp.ravel(), minlength=n + 1)[1:]


def _clear(labels: np.ndarray, box: tuple[slice, ...], comp: np.ndarray, drop: np.ndarray) -> int:
    """Set the listed components (1-based ids) of one structure inside ``box`` to background."""
    if drop.size == 0:
        return 0
    mask = np.isin(comp, drop)
    labels[box][mask] = 0
    return int(mask.sum())


def apply_post(labels: np.ndarray, structures: Sequence[LabelledStructure], steps: Sequence[PostStep],
               spacing: tuple[float, float, float]) -> np.ndarray:
    """The label map after the post steps, in place. Voxel counts are on this (working) grid."""
    ids = {s.name: s.label for s in structures}
    voxel_mm3 = float(np.prod(spacing))
    for step in steps:
        boxes = ndimage.find_objects(labels)  # one pass: each label's bounding box
        if isinstance(step, KeepLargestComponent):
            targets = step.structures or tuple(ids)
        else:
            targets = tuple(ids)
        for name in targets:
            label = ids.get(name)
            box = boxes[label - 1] if label is not None and label - 1 < len(boxes) else None
            if box is None or label is None:
                continue
            if isinstance(step, RemoveFragments) and step.threshold(name) <= 0:
                continue
            comp, sizes = _components(labels, label, box, step.connectivity)
            if isinstance(step, KeepLargestComponent):
                drop = np.argsort(-sizes, kind="stable")[step.count:] + 1
            else:
                assert isinstance(step, RemoveFragments)
                minimum = step.threshold(name)
                if step.unit == "mm3":
                    minimum = minimum / voxel_mm3
                drop = np.nonzero(sizes < minimum)[0] + 1
            cleared = _clear(labels, box, comp, drop)
            if cleared:
                log.info("%s: %s removed %d of %d component(s), %d voxels", type(step).__name__, name, drop.size,
                         sizes.size, cleared)
    return labels


def _label_ids(names: dict[int, str | None], wanted: Sequence[str]) -> list[int]:
    return [label for label, name in names.items() if name in wanted]


def crop_region(crop: Crop, maps: PartMaps, volume: Volume) -> tuple[slice, slice, slice] | None:
    """The box a dependent part runs in (array order), or None when what it depends on is absent.

    Around the centroid of ``crop``'s structure in an earlier part's map when it has at least
    ``min_voxels`` voxels (CADS: the brain for its head tasks); else, with ``else_above``, every
    voxel superior to the lowest voxel of the fallback structures (CADS: the cervical vertebrae)."""
    labels, names = maps[crop.part]
    ids = [crop.label] if crop.label is not None else _label_ids(names, [crop.structure or ""])
    mask = np.isin(labels, ids)
    count = int(mask.sum())
    shape = labels.shape
    if count >= crop.min_voxels:
        centre = [int(c) for c in ndimage.center_of_mass(mask)]
        box = []
        for t in range(3):  # array axis t is index axis 2 - t
            half = round(crop.half_size_mm[2 - t] / volume.spacing[2 - t])
            box.append(slice(max(centre[t] - half, 0), min(centre[t] + half, shape[t])))
        log.info("crop around %s of part %s (%d voxels, centroid %s): %s", crop.structure or crop.label, crop.part,
                 count, centre[::-1], [(s.start, s.stop) for s in box])
        return box[0], box[1], box[2]
    if crop.else_above is not None:
        fb_labels, fb_names = maps[crop.else_above.part]
        fb = np.isin(fb_labels, _label_ids(fb_names, crop.else_above.structures))
        if fb.any():
            d = _direction(volume)
            axis = int(np.argmax(np.abs(d[2])))  # the index axis closest to inferior-superior
            t = 2 - axis
            hits = np.nonzero(fb.any(axis=tuple(x for x in range(3) if x != t)))[0]
            cut = slice(int(hits[0]), shape[t]) if d[2, axis] > 0 else slice(0, int(hits[-1]) + 1)
            box = [slice(0, n) for n in shape]
            box[t] = cut
            log.info("crop: %s has %d voxels (< %d); above the lowest %s of part %s instead: axis %d %s",
                     crop.structure or crop.label, count, crop.min_voxels, "/".join(crop.else_above.structures),
                     crop.else_above.part, t, (cut.start, cut.stop))
            return box[0], box[1], box[2]
    log.info("crop: %s of part %s has %d voxels (< %d) and no fallback applies: the part is skipped",
             crop.structure or crop.label, crop.part, count, crop.min_voxels)
    return None
