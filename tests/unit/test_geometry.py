"""Pure stack geometry: orientation, spacing analysis, shear and number formatting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dicom_node import geometry


@pytest.mark.parametrize(("iop", "normal"), [
    ((1, 0, 0, 0, 1, 0), (0, 0, 1)),     # HFS
    ((-1, 0, 0, 0, 1, 0), (0, 0, -1)),   # FFS
    ((-1, 0, 0, 0, -1, 0), (0, 0, 1)),   # HFP
    ((0, -1, 0, 1, 0, 0), (0, 0, 1)),    # HFDL
    ((1, 0, 0, 0, 0, -1), (0, 1, 0)),    # coronal
])
def test_normal_is_row_cross_column(iop: tuple[float, ...], normal: tuple[float, ...]) -> None:
    orientation = geometry.orientation_from_iop(iop)
    assert orientation is not None
    assert np.allclose(orientation.normal, normal)
    d = np.asarray(orientation.direction()).reshape(3, 3)
    assert np.allclose(d[:, 0], iop[:3]) and np.allclose(d[:, 1], iop[3:]) and np.allclose(d[:, 2], normal)
    assert math.isclose(float(np.linalg.det(d)), 1.0)


def test_noisy_cosines_are_normalised() -> None:
    orientation = geometry.orientation_from_iop((0.999999, 0.0001, 0, -0.0001, 1.000001, 0))
    assert orientation is not None
    assert math.isclose(float(np.linalg.norm(orientation.row)), 1.0)


@pytest.mark.parametrize("iop", [(1, 0, 0, 1, 0, 0), (2, 0, 0, 0, 1, 0), (1, 0, 0, 0, 1), (0, 0, 0, 0, 0, 0),
                                 (float("nan"), 0, 0, 0, 1, 0)])
def test_invalid_orientations(iop: tuple[float, ...]) -> None:
    assert geometry.orientation_from_iop(iop) is None


def test_even_stack() -> None:
    spacing = geometry.analyse_spacing([0.0, 2.0, 4.0, 6.0])
    assert spacing.even and spacing.usual_step == 2.0 and spacing.steps == (2.0, 2.0, 2.0)


def test_gap_is_a_whole_multiple_of_the_usual_step() -> None:
    spacing = geometry.analyse_spacing([0.0, 3.0, 6.0, 12.0, 15.0])
    assert spacing.gaps == (geometry.Gap(after=2, size_mm=6.0, missing=1),) and not spacing.uneven
    assert not spacing.even
    assert geometry.analyse_spacing([0.0, 3.0, 12.0, 15.0, 18.0]).gaps[0].missing == 2


def test_uneven_and_duplicates() -> None:
    assert geometry.analyse_spacing([0.0, 3.0, 6.0, 10.5, 13.5]).uneven
    dup = geometry.analyse_spacing([0.0, 3.0, 3.0, 6.0])
    assert dup.duplicates == (1,) and not dup.even
    same = geometry.analyse_spacing([5.0, 5.0, 5.0])
    assert same.duplicates == (0, 1) and same.usual_step == 0.0


def test_single_position_is_trivially_even() -> None:
    assert geometry.analyse_spacing([1.0]).even


def test_tolerance_is_one_percent_or_five_hundredths_of_a_mm() -> None:
    assert geometry.spacing_tolerance(10.0) == pytest.approx(0.1)
    assert geometry.spacing_tolerance(1.0) == pytest.approx(0.05)
    assert geometry.analyse_spacing([0.0, 1.0, 2.04, 3.04]).even
    assert not geometry.analyse_spacing([0.0, 1.0, 2.07, 3.07]).even


def test_shear_angle_and_in_plane_offsets() -> None:
    normal = (0.0, 0.0, 1.0)
    step = math.tan(math.radians(14.0))
    positions = [(0.0, k * 5.0 * step, k * 5.0) for k in range(4)]
    assert geometry.shear_degrees(positions[0], positions[-1], normal) == pytest.approx(14.0)
    assert geometry.shear_degrees((1, 2, 3), (1, 2, 3), normal) == 0.0
    offsets = geometry.in_plane_offsets(positions, normal)
    assert offsets[0] == 0.0 and offsets[-1] == pytest.approx(15.0 * step)


@pytest.mark.parametrize(("value", "text"), [(3.0, "3.0"), (0.75, "0.75"), (4.999998, "5.0"), (10.0, "10.0"),
                                             (1.25, "1.25"), (-681.5, "-681.5")])
def test_format_mm(value: float, text: str) -> None:
    assert geometry.format_mm(value) == text
