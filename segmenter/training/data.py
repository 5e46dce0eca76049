"""Training data for multi-head models: nnU-Net raw datasets, per-head targets, patch sampling, augmentation.

A dataset is an nnU-Net v2 raw folder: ``dataset.json`` (``labels``: name -> value, ``background``
0, optional ``ignore``; ``file_ending``), ``imagesTr/<case>_0000<ending>``, ``labelsTr/<case><ending>``.
Label names are catalogue names (or SALT tree node names). A dataset may label only some structures
(partial labels): for a head, the structures the dataset does not label are *unannotated*; the loss
(:mod:`segmenter.training.train`) treats the background of such a dataset as "background or any
unannotated class" instead of as background. Voxels with the ``ignore`` value are left out.

Sampling (nnU-Net/clNet): with probability ``fg_fraction`` a patch is centred near a random voxel of
a random annotated structure of the case, otherwise anywhere. Crop heads (SOARS small & hard) are
sampled as crops around the true anchor centroid + the learnt offset, jittered, at the crop spacing.
Augmentation: intensity scale and shift, Gaussian noise, optional flips along ``flip_axes`` (none by
default: a left/right flip would swap lateral structures).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segmenter.core.errors import SegmenterError
from segmenter.multihead import cascade
from segmenter.multihead.model import net_shape, normalise
from segmenter.multihead.salt import LabelTree
from segmenter.multihead.spec import HeadSpec, Intensity, ModelSpec

log = logging.getLogger(__name__)

IGNORE = -1


class TrainingError(SegmenterError):
    """A dataset or a training run cannot be used as asked."""


@dataclass(frozen=True)
class Case:
    name: str
    image: np.ndarray  # float32 (z, y, x), HU
    labels: np.ndarray  # int (z, y, x), dataset values
    spacing: tuple[float, float, float]  # (z, y, x) mm


@dataclass(frozen=True)
class RawDataset:
    name: str
    labels: dict[str, int]  # structure name -> value (background excluded)
    ignore: int | None
    cases: tuple[Case, ...]

    @classmethod
    def read(cls, folder: Path) -> RawDataset:
        from segmenter.core.volume import Volume

        try:
            meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainingError(f"cannot read {folder / 'dataset.json'}: {exc}") from exc
        raw_labels = meta.get("labels")
        if not isinstance(raw_labels, dict) or not raw_labels:
            raise TrainingError(f"{folder}: dataset.json has no labels")
        ending = str(meta.get("file_ending", ".nii.gz"))
        labels = {str(k): int(v) for k, v in raw_labels.items() if k not in ("background", "ignore")}
        ignore = int(raw_labels["ignore"]) if "ignore" in raw_labels else None
        cases = []
        for path in sorted((folder / "labelsTr").glob(f"*{ending}")):
            case = path.name[: -len(ending)]
            image = Volume.read(folder / "imagesTr" / f"{case}_0000{ending}")
            lab = Volume.read(path)
            if image.shape != lab.shape:
                raise TrainingError(f"{folder}: case {case}: image {image.shape} and labels {lab.shape} differ")
            sp = image.spacing
            cases.append(Case(case, image.array.astype(np.float32), lab.array.astype(np.int64), (sp[2], sp[1], sp[0])))
        if not cases:
            raise TrainingError(f"{folder}: no cases in labelsTr/ (ending {ending})")
        log.info("dataset %s: %d cases, labels %s", folder.name, len(cases), ", ".join(labels))
        return cls(folder.name, labels, ignore, tuple(cases))

    def annotated(self, head: HeadSpec) -> list[str]:
        """The head's structures (or tree nodes) this dataset labels."""
        if head.kind == "salt":
            tree = LabelTree(head.tree or ())
            return [n for n in self.labels if _tree_index(tree, n) is not None]
        return [s for s in head.structures if s in self.labels]


def _tree_index(tree: LabelTree, name: str) -> int | None:
    try:
        return tree.index(name)
    except SegmenterError:
        return None


def head_target(head: HeadSpec, dataset: RawDataset, labels: np.ndarray) -> np.ndarray:
    """Dataset label values -> the head's target: class index (softmax) or node index (salt); -1 ignored."""
    lut_size = max([0, *dataset.labels.values(), dataset.ignore or 0]) + 1
    lut = np.zeros(lut_size, dtype=np.int64)
    if head.kind == "salt":
        tree = LabelTree(head.tree or ())
        lut[:] = IGNORE
        bg = _tree_index(tree, "background")
        lut[0] = IGNORE if bg is None else bg
        for name, value in dataset.labels.items():
            idx = _tree_index(tree, name)
            if idx is not None:
                lut[value] = idx
    else:
        for name, value in dataset.labels.items():
            lut[value] = head.structures.index(name) + 1 if name in head.structures else 0
    if dataset.ignore is not None:
        lut[dataset.ignore] = IGNORE
    out: np.ndarray = lut[np.clip(labels, 0, lut_size - 1)]
    return out


def intensity_from(datasets: Sequence[RawDataset]) -> Intensity:
    """nnU-Net's CT normalisation statistics over labelled voxels: 0.5/99.5 % clip, mean, std."""
    values = []
    for ds in datasets:
        for c in ds.cases:
            fg = c.image[c.labels > 0]
            values.append(fg if fg.size else c.image.ravel())
    allv = np.concatenate(values).astype(np.float64)
    lo, hi = np.percentile(allv, [0.5, 99.5])
    clipped = np.clip(allv, lo, hi)
    return Intensity(clip=(float(lo), float(hi)), mean=float(clipped.mean()), std=float(max(clipped.std(), 1e-6)))


@dataclass
class PreparedCase:
    image: torch.Tensor  # (1, z, y, x) normalised, on the head's training grid
    target: torch.Tensor  # (z, y, x) long
    foreground: list[torch.Tensor]  # per annotated class: (n, 3) voxel indices (subsampled)
    spacing: tuple[float, float, float]
    anchor_centre: tuple[float, float, float] | None = None  # crop heads: true anchor centroid (mm)


def prepare(head: HeadSpec, spec: ModelSpec, dataset: RawDataset, seed: int = 0) -> list[PreparedCase]:
    """Normalise, resample (whole-image heads: to the model spacing) and index foreground."""
    rng = np.random.default_rng(seed)
    out = []
    for c in dataset.cases:
        target = torch.from_numpy(head_target(head, dataset, c.labels))
        image = normalise(c.image, spec).unsqueeze(0)
        spacing = c.spacing
        anchor = None
        if head.crop is not None:
            value = dataset.labels.get(head.crop.anchor)
            if value is None:
                raise TrainingError(f"head {head.name!r}: dataset {dataset.name} does not label the anchor "
                                    f"{head.crop.anchor!r} its crops are placed from")
            anchor = cascade.centroid_mm(c.labels == value, spacing)
            if anchor is None:
                log.warning("case %s has no %s; skipped for head %s", c.name, head.crop.anchor, head.name)
                continue
        elif spec.spacing is not None:
            shape = net_shape(c.image.shape, spacing, spec.spacing)
            image = cascade.resample_shape(image, shape)
            target = cascade.resample_shape(target[None].float(), shape, mode="nearest")[0].long()
            spacing = spec.spacing
        fg = []
        values = torch.unique(target)
        for v in values.tolist():
            if (head.kind == "softmax" and v <= 0) or v < 0:
                continue
            idx = torch.nonzero(target == v)
            if len(idx) > 2000:
                idx = idx[torch.from_numpy(rng.choice(len(idx), 2000, replace=False))]
            fg.append(idx)
        out.append(PreparedCase(image, target, fg, spacing, anchor))
    if not out:
        raise TrainingError(f"head {head.name!r}: no usable case in {dataset.name}")
    return out


class PatchSampler:
    """Random training patches (batch, 1, *patch) + targets (batch, *patch) from prepared cases."""

    def __init__(self, cases: Sequence[PreparedCase], patch: Sequence[int], fg_fraction: float,
                 rng: np.random.Generator, head: HeadSpec | None = None, divisor: int = 1,
                 jitter_mm: float = 4.0) -> None:
        self.cases = list(cases)
        self.patch = tuple(int(p) for p in patch)
        self.fg_fraction = fg_fraction
        self.rng = rng
        self.head = head
        self.divisor = divisor
        self.jitter_mm = jitter_mm

    def _crop_sample(self, case: PreparedCase) -> tuple[torch.Tensor, torch.Tensor]:
        if self.head is None or self.head.crop is None or case.anchor_centre is None:
            raise TrainingError("crop sampling needs a crop head and the anchor's centroid")
        centre = [c + self.rng.uniform(-self.jitter_mm, self.jitter_mm) for c in case.anchor_centre]
        box = cascade.crop_box(self.head.crop, centre, self.divisor)
        image = cascade.sample_box(case.image, case.spacing, box)
        target = cascade.sample_box(case.target[None].float() + 1, case.spacing, box, mode="nearest",
                                    padding="zeros")[0].long() - 1
        target[target < -1] = IGNORE
        return image, target

    def _patch_sample(self, case: PreparedCase) -> tuple[torch.Tensor, torch.Tensor]:
        shape = case.target.shape
        pads = [max(0, p - s) for p, s in zip(self.patch, shape, strict=True)]
        image, target = case.image, case.target
        if any(pads):
            flat = [v for p in reversed(pads) for v in (p // 2, p - p // 2)]
            image = torch.nn.functional.pad(image, flat, value=float(image.min()))
            target = torch.nn.functional.pad(target, flat, value=IGNORE)
            shape = target.shape
        if case.foreground and self.rng.random() < self.fg_fraction:
            cls = case.foreground[int(self.rng.integers(len(case.foreground)))]
            voxel = cls[int(self.rng.integers(len(cls)))].tolist()
            voxel = [v + p // 2 for v, p in zip(voxel, pads, strict=True)]
            start = [int(np.clip(v - self.rng.integers(0, p), 0, s - p))
                     for v, p, s in zip(voxel, self.patch, shape, strict=True)]
        else:
            start = [int(self.rng.integers(0, s - p + 1)) for p, s in zip(self.patch, shape, strict=True)]
        sl = tuple(slice(s, s + p) for s, p in zip(start, self.patch, strict=True))
        return image[(slice(None), *sl)], target[sl]

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = [], []
        for _ in range(batch):
            case = self.cases[int(self.rng.integers(len(self.cases)))]
            x, y = self._crop_sample(case) if self.head is not None and self.head.crop is not None \
                else self._patch_sample(case)
            images.append(x)
            targets.append(y)
        return torch.stack(images), torch.stack(targets)


def augment(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator,
            flip_axes: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity scale 0.9-1.1 and shift +-0.1 (p 0.5 each), Gaussian noise sigma <= 0.05 (p 0.3),
    flips along ``flip_axes`` (spatial axes 0-2, p 0.5 each). Same random draw for the whole batch."""
    if rng.random() < 0.5:
        x = x * float(rng.uniform(0.9, 1.1))
    if rng.random() < 0.5:
        x = x + float(rng.uniform(-0.1, 0.1))
    if rng.random() < 0.3:
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        x = x + torch.randn(x.shape, generator=g) * float(rng.uniform(0, 0.05))
    for axis in flip_axes:
        if rng.random() < 0.5:
            x = torch.flip(x, (axis + 2,))
            y = torch.flip(y, (axis + 1,))
    return x, y
