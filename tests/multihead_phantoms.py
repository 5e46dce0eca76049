"""Synthetic CT phantoms written as nnU-Net raw datasets, for the multi-head engine's tests.

A body ellipsoid (soft tissue, noisy) holds organs of distinct HU at case-dependent positions and
sizes. Which organs a dataset *labels* is chosen per dataset (partial labels): every image holds
every organ, the label map only the chosen ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int = 0) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def deterministic_torch() -> Iterator[None]:
    """For a module-scoped autouse fixture: one thread, deterministic algorithms; restored afterwards
    so that other test modules keep their own settings."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    seed_everything(0)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@dataclass(frozen=True)
class Organ:
    name: str
    hu: float
    centre: tuple[float, float, float]  # fraction of the volume (z, y, x)
    radii: tuple[float, float, float]  # mm
    jitter_mm: float = 3.0
    near: str | None = None  # placed at that organ's centre + ``offset_mm`` (+ jitter) instead
    offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)


ABDOMEN = (
    Organ("Liver", 60.0, (0.5, 0.5, 0.33), (9.0, 11.0, 9.0)),
    Organ("Spleen", 120.0, (0.5, 0.38, 0.68), (6.0, 6.0, 5.0)),
    Organ("Kidney_L", 190.0, (0.5, 0.68, 0.68), (6.0, 5.0, 4.0)),
    Organ("Kidney_R", 250.0, (0.5, 0.66, 0.34), (5.0, 4.0, 5.0)),
)


def _ellipsoid(shape: Sequence[int], spacing: Sequence[float], centre_mm: np.ndarray,
               radii: Sequence[float]) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    return ((zz - centre_mm[0]) / radii[0]) ** 2 + ((yy - centre_mm[1]) / radii[1]) ** 2 + \
        ((xx - centre_mm[2]) / radii[2]) ** 2 <= 1.0


def make_case(rng: np.random.Generator, organs: Sequence[Organ], shape: tuple[int, int, int],
              spacing: tuple[float, float, float], noise: float = 15.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(image HU, masks by organ name)."""
    extent = np.asarray(shape) * np.asarray(spacing)
    image = np.full(shape, -1000.0, dtype=np.float32)
    body = _ellipsoid(shape, spacing, extent / 2, extent * np.array([0.6, 0.45, 0.47]))
    image[body] = 20.0
    masks = {"External": body}
    centres: dict[str, np.ndarray] = {}
    for organ in organs:
        base = np.asarray(organ.centre) * extent if organ.near is None else centres[organ.near] + organ.offset_mm
        centre = base + rng.uniform(-organ.jitter_mm, organ.jitter_mm, 3)
        centres[organ.name] = centre
        radii = np.asarray(organ.radii) * rng.uniform(0.85, 1.15, 3)
        mask = _ellipsoid(shape, spacing, centre, radii) & body
        image[mask] = organ.hu
        masks[organ.name] = mask
    image += rng.normal(0.0, noise, shape).astype(np.float32)
    return image, masks


def write_dataset(folder: Path, cases: int, organs: Sequence[Organ], labelled: Sequence[str], seed: int,
                  shape: tuple[int, int, int] = (24, 48, 48), spacing: tuple[float, float, float] = (2.0, 1.5, 1.5),
                  noise: float = 15.0) -> Path:
    """An nnU-Net raw dataset of ``cases`` phantoms labelling only ``labelled`` (values 1..n in order)."""
    from segmenter.core.volume import Volume

    rng = np.random.default_rng(seed)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    geometry = dict(spacing=(spacing[2], spacing[1], spacing[0]), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    for i in range(cases):
        image, masks = make_case(rng, organs, shape, spacing, noise)
        labels = np.zeros(shape, dtype=np.uint8)
        for value, name in enumerate(labelled, start=1):
            labels[masks[name]] = value
        Volume(image, **geometry).write(folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz")  # type: ignore[arg-type]
        Volume(labels, **geometry).write(folder / "labelsTr" / f"case_{i:03d}.nii.gz")  # type: ignore[arg-type]
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **{n: v for v, n in enumerate(labelled, 1)}},
            "numTraining": cases, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return folder


HEAD = (
    Organ("Eye_L", 40.0, (0.5, 0.5, 0.5), (7.0, 7.0, 7.0), jitter_mm=5.0),
    Organ("Glnd_Lacrimal_L", 90.0, (0, 0, 0), (2.0, 2.5, 2.0), jitter_mm=1.0, near="Eye_L",
          offset_mm=(2.0, -8.0, 8.0)),
)
