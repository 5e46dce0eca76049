"""Read, sort and check a CT series -> a correctly oriented volume.

``load_series(paths) -> CtSeries`` or ``SeriesError`` whose message is the reason stored on the job
and shown to a physicist. The per-instance summaries the receiver stores for the completion policy
(``slice_position``, ``expected_instance_count``) live in ``dicom_node.dicom_header``, which the
listener imports without this package (and so without the imaging stack).

Ordering and geometry convention (the same as SimpleITK/GDCM's series reader):

- slices (single-frame instances, or frames of an Enhanced CT) are sorted by ascending projection of
  ``ImagePositionPatient`` on the slice normal ``n = row cosine x column cosine``;
- ``volume.array[k]`` is the k-th slice in that order and ``datasets[k]`` its header;
- ``origin`` is the ImagePositionPatient of slice 0, ``spacing`` is (column spacing =
  PixelSpacing[1], row spacing = PixelSpacing[0], mean step along n), and ``direction`` is the
  row-major 3x3 matrix whose columns are the row cosine, the column cosine and n. The step direction
  is therefore always +n and the matrix is right-handed; a feet-first series simply has n pointing
  towards the feet, and its slice 0 is the most cranial one.

Reading is tolerant (``force=True``, file meta repaired where the transfer syntax is missing;
``pixels``); checking is strict: mixed orientations, sizes or pixel spacings, duplicate positions,
gantry tilt (shear), uneven spacing and missing slices are refused with a reason (``stack``).
"""

from dicom_node.dicom_header import expected_instance_count, slice_position
from dicom_node.series_io.loading import DEFAULT_MIN_SLICES, CtSeries, load_series
from dicom_node.series_io.pixels import decode_hu, read_header
from dicom_node.series_io.slices import CT_SOP_CLASSES
from dicom_node.series_io.stack import LATERAL_TOLERANCE_MM, TILT_TOLERANCE_DEG

__all__ = [
    "CT_SOP_CLASSES",
    "DEFAULT_MIN_SLICES",
    "LATERAL_TOLERANCE_MM",
    "TILT_TOLERANCE_DEG",
    "CtSeries",
    "decode_hu",
    "expected_instance_count",
    "load_series",
    "read_header",
    "slice_position",
]
