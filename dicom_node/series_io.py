"""Read, sort and check a CT series -> a correctly oriented volume.

Interface (implementation in progress): ``load_series(paths) -> CtSeries`` or ``SeriesError`` whose
message is the reason stored on the job.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from segmenter.volume import Volume


@dataclass(frozen=True)
class CtSeries:
    """A checked CT series: the volume in HU and the source headers in the volume's slice order.

    ``datasets[k]`` is the instance whose pixels are ``volume.array[k]`` (headers only, no pixel
    data kept), so writers can reference the exact source image of every slice.
    """

    volume: Volume
    datasets: tuple[Dataset, ...]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
