"""A checked CT series from its files: headers read, slices sorted and checked, pixels decoded.

``load_series(paths) -> CtSeries`` or ``SeriesError`` whose message is the reason stored on the job
and shown to a physicist.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicom_node import geometry
from dicom_node.dicom_header import header_text
from dicom_node.errors import SeriesError
from dicom_node.series_io.pixels import decode_stack, read_header
from dicom_node.series_io.slices import slices_of
from dicom_node.series_io.stack import check_geometry, check_identity
from segmenter.core.volume import Volume

log = logging.getLogger(__name__)

DEFAULT_MIN_SLICES = 3


@dataclass(frozen=True)
class CtSeries:
    """A checked CT series: the volume in HU and the source headers in the volume's slice order.

    ``datasets[k]`` is the instance whose pixels are ``volume.array[k]`` (headers only, no pixel
    data kept), so writers can reference the exact source image of every slice. For an Enhanced
    (multi-frame) CT the same header appears once per frame and ``frame_numbers[k]`` is the 1-based
    frame of slice k; it is None for single-frame instances (and the tuple may be empty when the
    series was built elsewhere).
    """

    volume: Volume
    datasets: tuple[Dataset, ...]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    frame_numbers: tuple[int | None, ...] = ()
    # False when read with ``load_series(..., pixels=False)``: ``volume`` then has the series' geometry
    # but its array is a read-only zero placeholder (no memory), fit only for writers that need the grid
    has_pixels: bool = True


def load_series(paths: Sequence[Path], *, min_slices: int = DEFAULT_MIN_SLICES, pixels: bool = True) -> CtSeries:
    """Read the instances of one CT series, check them and build the HU volume.

    Raises SeriesError with a reason meant for a physicist when the files cannot be read, do not form
    one straight evenly spaced stack of at least ``min_slices`` slices, or pixels cannot be decoded.
    ``pixels=False`` reads and checks the headers only (the files are read up to their pixel data):
    for writing outputs from a label map made elsewhere, where only the grid and the headers count;
    the result has ``has_pixels`` False and a zero placeholder array.
    """
    if min_slices < 1:
        raise ValueError(f"min_slices must be at least 1, got {min_slices}")
    if not paths:
        raise SeriesError("no instances given")
    headers = [read_header(Path(p)) for p in paths]
    check_identity(headers)
    slices = [s for index, ds in enumerate(headers) for s in slices_of(ds, index, Path(paths[index]).name)]
    ordered, orientation, step = check_geometry(slices, headers, min_slices)
    first = ordered[0]
    if pixels:
        array = decode_stack(paths, ordered)
    else:
        array = np.broadcast_to(np.zeros((), dtype=np.int16), (len(ordered), first.rows, first.columns))
    volume = Volume(array, (first.pixel_spacing[1], first.pixel_spacing[0], step), first.ipp,
                    orientation.direction())
    log.info("loaded series: %d slices of %dx%d, step %s mm, %s", len(ordered), first.rows, first.columns,
             geometry.format_mm(step), array.dtype if pixels else "headers only")
    top = headers[ordered[0].file_index]
    return CtSeries(
        volume=volume,
        datasets=tuple(headers[s.file_index] for s in ordered),
        study_uid=header_text(top, "StudyInstanceUID"),
        series_uid=header_text(top, "SeriesInstanceUID"),
        frame_of_reference_uid=header_text(top, "FrameOfReferenceUID"),
        frame_numbers=tuple(s.frame for s in ordered),
        has_pixels=pixels,
    )
