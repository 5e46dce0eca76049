"""Pure slice-stack geometry shared by the series loader and the completion policy.

Conventions (DICOM patient coordinates, LPS, millimetres):

- ``ImageOrientationPatient`` holds the row cosine (direction of increasing column index) and the
  column cosine (direction of increasing row index); the slice normal is ``row x column``.
- A slice's position along the stack is the projection of its ``ImagePositionPatient`` on that
  normal. Stacks are ordered by ascending projection, so the step direction is always ``+normal``
  and the volume direction matrix is right-handed.

Nothing here reads files or raises; callers turn the findings into their own errors or decisions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Cosines written by real scanners carry ~1e-6 of noise; 1e-3 is about 0.06 degrees.
ORIENTATION_TOLERANCE = 1e-3
# Slice steps may differ by this much before the stack counts as unevenly spaced: 1 % of the step
# or 0.05 mm, whichever is larger (positions are rounded DS strings; thin slices need the mm floor).
SPACING_RELATIVE_TOLERANCE = 0.01
SPACING_ABSOLUTE_TOLERANCE_MM = 0.05
# Two slices closer than this along the normal occupy the same position.
DUPLICATE_TOLERANCE_MM = 0.05


@dataclass(frozen=True)
class Orientation:
    """Unit row cosine, unit column cosine and their cross product, the slice normal."""

    row: tuple[float, float, float]
    column: tuple[float, float, float]
    normal: tuple[float, float, float]

    def direction(self) -> tuple[float, ...]:
        """3x3 row-major matrix whose columns are row cosine, column cosine and normal (SimpleITK order)."""
        matrix = np.stack([self.row, self.column, self.normal], axis=1)
        return tuple(float(v) for v in matrix.ravel())


def orientation_from_iop(iop: Sequence[float]) -> Orientation | None:
    """The orientation of six ImageOrientationPatient values, or None when they are not two
    (nearly) unit, (nearly) orthogonal vectors."""
    if len(iop) != 6:
        return None
    values = np.asarray([float(v) for v in iop], dtype=float)
    if not np.all(np.isfinite(values)):
        return None
    row, column = values[:3], values[3:]
    row_norm, column_norm = float(np.linalg.norm(row)), float(np.linalg.norm(column))
    # scanners write cosines with 5-6 decimals; 1 % slack keeps rounded values, rejects nonsense
    if abs(row_norm - 1.0) > 0.01 or abs(column_norm - 1.0) > 0.01:
        return None
    row, column = row / row_norm, column / column_norm
    if abs(float(np.dot(row, column))) > 0.01:
        return None
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    return Orientation(_triple(row), _triple(column), _triple(normal))


def same_orientation(a: Sequence[float], b: Sequence[float], tolerance: float = ORIENTATION_TOLERANCE) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= tolerance for x, y in zip(a, b, strict=True))


def project(position: Sequence[float], normal: Sequence[float]) -> float:
    """Position of a slice along the normal (mm)."""
    return float(np.dot(np.asarray(position, dtype=float), np.asarray(normal, dtype=float)))


def spacing_tolerance(step: float) -> float:
    return max(SPACING_RELATIVE_TOLERANCE * abs(step), SPACING_ABSOLUTE_TOLERANCE_MM)


@dataclass(frozen=True)
class Gap:
    """A step that is a whole multiple of the usual step: ``missing`` slices between ``after`` and ``after + 1``."""

    after: int
    size_mm: float
    missing: int


@dataclass(frozen=True)
class StackSpacing:
    """What the sorted positions of a stack say about its spacing.

    ``steps`` are the differences of the sorted positions; ``usual_step`` is their median.
    ``duplicates`` are indices k where slices k and k+1 share a position; ``gaps`` are steps that are
    whole multiples (>= 2) of the usual step; ``uneven`` is true when some other step differs from the
    usual one by more than the tolerance.
    """

    steps: tuple[float, ...]
    usual_step: float
    duplicates: tuple[int, ...]
    gaps: tuple[Gap, ...]
    uneven: bool

    @property
    def even(self) -> bool:
        """One straight, evenly spaced stack: no duplicates, no gaps, no odd steps."""
        return not self.duplicates and not self.gaps and not self.uneven


def analyse_spacing(sorted_positions: Sequence[float]) -> StackSpacing:
    """Steps between ascending positions; a single position gives an empty, even analysis."""
    positions = np.asarray(sorted_positions, dtype=float)
    steps = np.diff(positions)
    if steps.size == 0:
        return StackSpacing((), 0.0, (), (), False)
    duplicates = tuple(int(k) for k in np.flatnonzero(steps < DUPLICATE_TOLERANCE_MM))
    real = steps[steps >= DUPLICATE_TOLERANCE_MM]
    if real.size == 0:
        return StackSpacing(tuple(float(s) for s in steps), 0.0, duplicates, (), False)
    usual = float(np.median(real))
    tolerance = spacing_tolerance(usual)
    gaps: list[Gap] = []
    uneven = False
    for k, step in enumerate(steps):
        if step < DUPLICATE_TOLERANCE_MM or abs(step - usual) <= tolerance:
            continue
        multiple = round(step / usual)
        if multiple >= 2 and abs(step - multiple * usual) <= tolerance * multiple:
            gaps.append(Gap(k, float(step), multiple - 1))
        else:
            uneven = True
    return StackSpacing(tuple(float(s) for s in steps), usual, duplicates, tuple(gaps), uneven)


def shear_degrees(first: Sequence[float], last: Sequence[float], normal: Sequence[float]) -> float:
    """Angle between the line through the first and last slice positions and the slice normal.

    0 for a straight stack; a gantry-tilted acquisition reconstructed without resampling gives the
    tilt angle. 0 when both positions coincide.
    """
    delta = np.asarray(last, dtype=float) - np.asarray(first, dtype=float)
    length = float(np.linalg.norm(delta))
    if length == 0.0:
        return 0.0
    along = abs(float(np.dot(delta, np.asarray(normal, dtype=float)))) / length
    return math.degrees(math.acos(min(1.0, along)))


def in_plane_offsets(positions: Sequence[Sequence[float]], normal: Sequence[float]) -> np.ndarray:
    """Distance (mm) of each position from the line through the first one along the normal."""
    points = np.asarray(positions, dtype=float)
    n = np.asarray(normal, dtype=float)
    delta = points - points[0]
    lateral = delta - np.outer(delta @ n, n)
    return np.asarray(np.linalg.norm(lateral, axis=1))


def format_mm(value: float) -> str:
    """3.0 -> '3.0', 0.75 -> '0.75', 4.999998 -> '5.0': readable in a message to a physicist."""
    text = f"{round(value, 2):.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _triple(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))
