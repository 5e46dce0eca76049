"""A job's CT series and kept label map, loaded into display order for the viewer, the last few kept in memory.

The label map is the one the worker kept beside the job's objects (``labels.nii.gz``, one
``mask_<name>.nii.gz`` per overlapping structure, ``structures.json``; see
:func:`dicom_node.pipeline.keep_label_map`); the CT is the job's stored series, read as the worker
reads it. Loading a CT takes a second or more; every slice after that is drawn from memory, so
:class:`VolumeCache` keeps the last few volumes (least recently used out) and loads each once,
however many slice requests arrive together for it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_node.errors import OutputError, SeriesError
from dicom_node.outputs.preview import display_volume
from dicom_node.pipeline import LABELS_FILE, STRUCTURES_FILE, mask_file
from dicom_node.series_io import load_series
from dicom_node.viewer.render import ReviewVolume, ViewerError, ViewStructure
from segmenter.core.catalogue import load_catalogue
from segmenter.core.errors import VolumeError
from segmenter.core.volume import Volume

log = logging.getLogger(__name__)

FALLBACK_COLOUR = (255, 128, 0)  # a structure the catalogue does not know (none should reach here)
HU_RANGE = (-32768, 32767)


@dataclass(frozen=True)
class JobImages:
    """Where a job's images are: its CT instances and its output folder."""

    job_id: int
    paths: tuple[Path, ...]
    out_dir: Path
    # the job's structure colours (as its review queue entry lists them), asked for when it is loaded;
    # a name it does not give is drawn in its catalogue colour
    colours: Callable[[], Mapping[str, tuple[int, int, int]]] | None = None


def colour_of(name: str) -> tuple[int, int, int]:
    info = load_catalogue().get(name)
    return FALLBACK_COLOUR if info is None else info.colour


def _structure_names(out_dir: Path) -> tuple[dict[int, str], list[str]]:
    try:
        data = json.loads((out_dir / STRUCTURES_FILE).read_text(encoding="utf-8"))
        labels = {int(k): str(v) for k, v in data["labels"].items()}
        extra = [str(n) for n in data.get("extra_masks", [])]
    except FileNotFoundError as exc:
        raise ViewerError(f"no label map kept for this job ({out_dir / STRUCTURES_FILE} is missing)") from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ViewerError(f"cannot read {out_dir / STRUCTURES_FILE}: {exc}") from exc
    return labels, extra


def _image(path: Path) -> Volume:
    try:
        return Volume.read(path)
    except VolumeError as exc:
        raise ViewerError(f"cannot read the label map: {exc}") from exc


def load_review_volume(job: JobImages) -> ReviewVolume:
    """The job's CT and structures in display order, or ViewerError saying what is missing."""
    if not job.paths:
        raise ViewerError(f"the series of job {job.job_id} holds no instances (removed by housekeeping?)")
    names, extra = _structure_names(job.out_dir)
    given = job.colours() if job.colours is not None else {}

    def colour(name: str) -> tuple[int, int, int]:
        return given.get(name) or colour_of(name)

    try:
        series = load_series(list(job.paths))
    except SeriesError as exc:
        raise ViewerError(f"cannot read the CT of job {job.job_id}: {exc}") from exc
    labels = _image(job.out_dir / LABELS_FILE)
    if labels.shape != series.volume.shape:
        raise ViewerError(f"the label map of job {job.job_id} {labels.shape} is not on its CT's grid "
                          f"{series.volume.shape}")
    try:
        display = display_volume(series.volume)
    except OutputError as exc:
        raise ViewerError(str(exc)) from exc
    ct = np.ascontiguousarray(np.clip(display.array, *HU_RANGE).astype(np.int16, copy=False))
    label_array = np.ascontiguousarray(display.apply(labels.array))
    voxel_cm3 = series.volume.voxel_volume_mm3 / 1000.0
    counts = np.bincount(label_array.ravel(), minlength=max(names, default=0) + 1)
    structures = [ViewStructure(name, colour(name), float(counts[label]) * voxel_cm3, label)
                  for label, name in sorted(names.items())]
    for name in extra:
        mask = np.ascontiguousarray(display.apply(_image(job.out_dir / mask_file(name)).array) > 0)
        if mask.shape != ct.shape:
            raise ViewerError(f"the mask of {name} of job {job.job_id} is not on its CT's grid")
        structures.append(ViewStructure(name, colour(name), float(np.count_nonzero(mask)) * voxel_cm3, 0, mask))
    volume = ReviewVolume(ct, label_array, display.spacing, tuple(structures))
    log.info("viewer: job %d loaded, %s voxels, %d structures", job.job_id, "x".join(map(str, ct.shape)),
             len(structures))
    return volume


class VolumeCache:
    """The last ``size`` jobs' volumes, least recently used out; each loaded once, even when many
    requests for it arrive together (they wait for the one load)."""

    def __init__(self, size: int, loader: Callable[[JobImages], ReviewVolume] = load_review_volume) -> None:
        self.size = size
        self.loader = loader
        self._volumes: OrderedDict[tuple[int, int], ReviewVolume] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[int, int], threading.Lock] = {}

    def get(self, job: JobImages) -> ReviewVolume:
        key = (job.job_id, _stamp(job.out_dir))  # a label map written again is loaded again
        with self._lock:
            found = self._hit(key)
            if found is not None:
                return found
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                found = self._hit(key)
                if found is not None:
                    return found
            try:
                volume = self.loader(job)
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:
                self._loading.pop(key, None)
                self._volumes[key] = volume
                for old in [k for k in self._volumes if k[0] == job.job_id and k != key]:
                    del self._volumes[old]
                while len(self._volumes) > self.size:
                    self._volumes.popitem(last=False)
            return volume

    def _hit(self, key: tuple[int, int]) -> ReviewVolume | None:
        volume = self._volumes.get(key)
        if volume is not None:
            self._volumes.move_to_end(key)
        return volume

    def __len__(self) -> int:
        return len(self._volumes)


def _stamp(out_dir: Path) -> int:
    try:
        return (out_dir / LABELS_FILE).stat().st_mtime_ns
    except OSError:
        return 0


def job_images(job_id: int, paths: Sequence[str], output_dir: Path,
               colours: Callable[[], Mapping[str, tuple[int, int, int]]] | None = None) -> JobImages:
    """A job's images as the worker left them (output_dir/job-NNNNNN)."""
    return JobImages(job_id, tuple(Path(p) for p in paths), output_dir / f"job-{job_id:06d}", colours)
