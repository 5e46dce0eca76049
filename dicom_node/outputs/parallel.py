"""Trace structures into contours on several CPU cores (the RTSTRUCT writer's costly part).

Structures are independent, so each is traced in a worker process (``fork``: the cropped masks
reach the children by pickling, the label map is never copied) and the polygons come back in the
structures' order. One structure, one CPU or ``workers=1`` traces in-process: no pool is started.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from dicom_node.outputs.common import StructureMask, iter_structures
from dicom_node.outputs.contours import ContourOptions, SlicePlane
from segmenter.result import SegmentationResult

log = logging.getLogger(__name__)

Polygons = list[tuple[int, np.ndarray]]

_PLANES: list[SlicePlane] = []
_OPTIONS = ContourOptions()


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _init(planes: list[SlicePlane], options: ContourOptions) -> None:
    global _PLANES, _OPTIONS
    _PLANES, _OPTIONS = planes, options


def _trace(structure: StructureMask) -> Polygons:
    from dicom_node.outputs.rtstruct import structure_polygons

    return structure_polygons(structure, _PLANES, _OPTIONS)


def traced_structures(result: SegmentationResult, planes: list[SlicePlane], options: ContourOptions,
                      workers: int | None = None) -> Iterator[tuple[StructureMask, Polygons]]:
    """(structure, polygons) for every non-empty structure, in order, traced on ``workers`` processes."""
    from dicom_node.outputs.rtstruct import structure_polygons

    structures = list(iter_structures(result))
    count = min(workers or available_cpus(), len(structures))
    if count <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for structure in structures:
            yield structure, structure_polygons(structure, planes, options)
        return
    # largest first, so the pool does not wait on one big structure at the end
    order = sorted(range(len(structures)), key=lambda n: -structures[n].mask.size)
    log.debug("tracing %d structures on %d processes", len(structures), count)
    with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("fork"), initializer=_init,
                             initargs=(planes, options)) as pool:
        futures = {n: pool.submit(_trace, structures[n]) for n in order}
        for n, structure in enumerate(structures):
            yield structure, futures[n].result()
