"""One structure's mask -> its encoded ContourSequence: traced per slice and placed on each slice plane.

Shared by the RTSTRUCT builder and the worker processes of :mod:`dicom_node.outputs.rtstruct.parallel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicom_node.errors import OutputError
from dicom_node.outputs.common import SlicePlane, StructureMask
from dicom_node.outputs.rtstruct.contours import ContourOptions, stack_contours
from dicom_node.outputs.rtstruct.encoding import contour_sequence


@dataclass(frozen=True)
class PlaneArrays:
    """Every slice plane as arrays: position, and the patient-space step of one column and one row."""

    position: np.ndarray  # (slices, 3)
    column_step: np.ndarray  # (slices, 3): + 1 column index (row cosine x column spacing)
    row_step: np.ndarray  # (slices, 3): + 1 row index (column cosine x row spacing)
    spacing_rc: tuple[float, float]

    @classmethod
    def of(cls, planes: list[SlicePlane]) -> PlaneArrays:
        spacings = {p.spacing_rc for p in planes}
        if len(spacings) != 1:
            raise OutputError(f"slice planes: {len(spacings)} different pixel spacings in one series")
        return cls(np.asarray([p.position for p in planes], dtype=np.float64),
                   np.asarray([np.multiply(p.row_cosine, p.spacing_rc[1]) for p in planes]),
                   np.asarray([np.multiply(p.column_cosine, p.spacing_rc[0]) for p in planes]),
                   planes[0].spacing_rc)


def encode_structure(structure: StructureMask, planes: PlaneArrays, options: ContourOptions,
                     references: list[bytes]) -> tuple[bytes, int]:
    """(encoded ContourSequence items, number of contours) of one structure."""
    polygons = stack_contours(structure.mask, planes.spacing_rc, options)
    if polygons.count == 0:
        return b"", 0
    k_box, j_box, i_box = structure.box
    slices = k_box.start + polygons.slices
    lengths = np.diff(polygons.starts)
    vertex_slice = np.repeat(slices, lengths)
    rows = polygons.points[:, 0:1] + j_box.start
    cols = polygons.points[:, 1:2] + i_box.start
    xyz = planes.position[vertex_slice] + cols * planes.column_step[vertex_slice] + rows * planes.row_step[vertex_slice]
    return contour_sequence(xyz, polygons.starts, [references[k] for k in slices.tolist()]), polygons.count
