"""Contour and encode structures on several CPU cores (the RTSTRUCT writer's costly part).

Structures are independent, so each is contoured and encoded in a worker process (``fork``: the
cropped masks reach the children by pickling, the label map is never copied) and the encoded
ContourSequences come back in the structures' order. One structure, one CPU or ``workers=1`` works
in-process: no pool is started.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from dicom_node.outputs.common import Boxes, StructureMask, iter_structures
from dicom_node.outputs.rtstruct.contours import ContourOptions
from dicom_node.outputs.rtstruct.roi_contours import PlaneArrays, encode_structure
from segmenter.core.catalogue import Catalogue
from segmenter.core.result import SegmentationResult

log = logging.getLogger(__name__)

Encoded = tuple[bytes, int]

_STATE: tuple[PlaneArrays, ContourOptions, list[bytes]] | None = None


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _init(planes: PlaneArrays, options: ContourOptions, references: list[bytes]) -> None:
    global _STATE
    _STATE = (planes, options, references)


def _encode(structure: StructureMask) -> Encoded:
    if _STATE is None:  # pragma: no cover - the pool initialiser always runs first
        raise RuntimeError("worker process started without its planes and options")
    return encode_structure(structure, *_STATE)


def encoded_structures(result: SegmentationResult, boxes: Boxes, planes: PlaneArrays, options: ContourOptions,
                       references: list[bytes], workers: int | None = None, catalogue: Catalogue | None = None
                       ) -> Iterator[tuple[StructureMask, Encoded]]:
    """(structure, (ContourSequence bytes, contour count)) for every non-empty structure, in order."""
    if workers == 1 or available_cpus() == 1 or "fork" not in multiprocessing.get_all_start_methods():
        for structure in iter_structures(result, boxes, catalogue):  # one cropped mask in memory at a time
            yield structure, encode_structure(structure, planes, options, references)
        return
    structures = list(iter_structures(result, boxes, catalogue))
    count = min(workers or available_cpus(), len(structures))
    if count <= 1:
        for structure in structures:
            yield structure, encode_structure(structure, planes, options, references)
        return
    # largest first, so the pool does not wait on one big structure at the end
    order = sorted(range(len(structures)), key=lambda n: -structures[n].mask.size)
    log.debug("contouring %d structures on %d processes", len(structures), count)
    with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("fork"), initializer=_init,
                             initargs=(planes, options, references)) as pool:
        futures = {n: pool.submit(_encode, structures[n]) for n in order}
        for n, structure in enumerate(structures):
            yield structure, futures[n].result()
