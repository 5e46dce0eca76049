"""Contour extraction: holes, islands, decimation, DS formatting, orientation."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import polygon as draw_polygon

from dicom_node.errors import OutputError
from dicom_node.outputs.common import SlicePlane, format_ds
from dicom_node.outputs.rtstruct.contours import (
    ContourOptions,
    decimate,
    rasterise_even_odd,
    remove_collinear,
    slice_contours,
    trace,
)
from dicom_node.outputs.rtstruct.encoding import MAX_VALUE_BYTES, contour_data
from segmenter.core.volume import Volume
from tests.outputs_helpers import ORIENTATIONS, direction_from_iop, patient_to_voxel

SPACING = (0.9765625, 0.9765625)


def skimage_xor(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Independent even-odd fill: skimage's polygon at pixel centres, combined with XOR."""
    out = np.zeros(shape, dtype=bool)
    for poly in polygons:
        rr, cc = draw_polygon(poly[:, 0], poly[:, 1], shape=shape)
        out[rr, cc] ^= True
    return out


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(yy - centre[0], xx - centre[1]) < radius


def test_ring_gives_outer_and_inner_contour_and_xor_fill_reproduces_it() -> None:
    ring = disc((64, 64), (31.3, 30.7), 20) & ~disc((64, 64), (31.3, 30.7), 9)
    polygons = slice_contours(ring, SPACING)
    assert len(polygons) == 2
    areas = sorted(abs(_area(p)) for p in polygons)
    assert areas[0] < areas[1] / 3  # one inner, one outer boundary
    assert np.array_equal(skimage_xor(polygons, ring.shape), ring)
    assert np.array_equal(rasterise_even_odd(polygons, ring.shape), ring)
    # without the hole contour the fill would be the full disc: the hole is really represented
    assert not np.array_equal(skimage_xor([max(polygons, key=lambda p: abs(_area(p)))], ring.shape), ring)


def test_island_inside_hole_inside_organ() -> None:
    mask = disc((80, 80), (40, 40), 35) & ~disc((80, 80), (40, 40), 20)
    mask |= disc((80, 80), (40, 40), 8)
    polygons = slice_contours(mask, SPACING)
    assert len(polygons) == 3
    assert np.array_equal(skimage_xor(polygons, mask.shape), mask)


def test_single_pixel_islands_are_kept_as_contours_of_at_least_three_points() -> None:
    mask = np.zeros((9, 9), dtype=bool)
    mask[0, 0] = mask[4, 4] = mask[5, 5] = mask[8, 2] = True  # (4,4)-(5,5) touch at a corner only
    polygons = slice_contours(mask, SPACING)
    assert len(polygons) == 4
    assert all(len(p) >= 3 for p in polygons)
    assert np.array_equal(skimage_xor(polygons, mask.shape), mask)


def test_island_threshold_drops_small_islands_only() -> None:
    mask = np.zeros((12, 12), dtype=bool)
    mask[1, 1] = True
    mask[5:7, 5] = True  # 2 pixels
    mask[9:12, 9:12] = True
    kept = slice_contours(mask, SPACING, ContourOptions(min_island_pixels=2))
    expected = mask.copy()
    expected[1, 1] = False
    assert np.array_equal(skimage_xor(kept, mask.shape), expected)
    assert len(slice_contours(mask, SPACING, ContourOptions(min_island_pixels=1))) == 3


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_reproduce_exactly_with_default_decimation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((50, 60)) > 0.55
    if seed % 2:
        mask = np.kron(mask, np.ones((3, 2), dtype=bool))  # blocky shapes with long straight runs
    polygons = slice_contours(mask, SPACING)
    assert np.array_equal(skimage_xor(polygons, mask.shape), mask)
    assert np.array_equal(rasterise_even_odd(polygons, mask.shape), mask)


def test_collinear_points_removed_losslessly() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:15, 4:25] = True
    (traced,) = trace(mask)
    reduced = remove_collinear(traced)
    assert len(traced) > 60
    assert len(reduced) == 8  # marching squares cuts each corner: an octagon
    assert np.array_equal(skimage_xor([reduced], mask.shape), mask)


def _max_vertex_distance(original: np.ndarray, simplified: np.ndarray, spacing: tuple[float, float]) -> float:
    p = original * np.asarray(spacing)
    a = simplified * np.asarray(spacing)
    ab = np.roll(a, -1, axis=0) - a
    t = np.clip(((p[:, None, :] - a[None]) * ab[None]).sum(-1) / (ab * ab).sum(-1)[None], 0, 1)
    return float(np.linalg.norm(p[:, None, :] - (a[None] + t[..., None] * ab[None]), axis=-1).min(axis=1).max())


@pytest.mark.parametrize("tolerance", [0.2, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("spacing", [(0.9765625, 0.9765625), (0.5, 2.0)])
def test_decimation_never_moves_the_boundary_more_than_the_tolerance(
        tolerance: float, spacing: tuple[float, float]) -> None:
    mask = disc((120, 120), (60.2, 59.7), 50) & ~disc((120, 120), (45, 50), 12)
    for traced in trace(mask):
        simplified = decimate(traced, spacing, tolerance, preserve_raster=False)
        assert 3 <= len(simplified) < len(traced)
        assert _max_vertex_distance(traced, simplified, spacing) <= tolerance + 1e-9
    if tolerance >= 1.0:  # a real reduction beyond the lossless one
        (outer, _inner) = sorted(trace(mask), key=lambda p: -abs(_area(p)))
        assert len(decimate(outer, spacing, tolerance, preserve_raster=False)) < len(remove_collinear(outer)) / 2


def test_default_decimation_keeps_the_raster_and_the_tolerance() -> None:
    mask = disc((200, 200), (100.3, 99.6), 80)
    (traced,) = trace(mask)
    simplified = decimate(traced, SPACING, 0.5)
    assert len(simplified) < len(remove_collinear(traced))
    assert _max_vertex_distance(traced, simplified, SPACING) <= 0.5
    assert np.array_equal(skimage_xor([simplified], mask.shape), mask)


def test_options_are_checked() -> None:
    with pytest.raises(OutputError, match="tolerance_mm"):
        ContourOptions(tolerance_mm=-1)
    with pytest.raises(OutputError, match="min_island_pixels"):
        ContourOptions(min_island_pixels=0)
    with pytest.raises(OutputError, match="2D"):
        trace(np.zeros((2, 2, 2), dtype=bool))


@pytest.mark.parametrize("value", [0.0, -0.0, 1 / 3, -249.51171875, -460.51171875 + 1e-9, 123456.789012,
                                   -99999.123456789, 1e-7, -1e-7, 12345678901.5, -1.23456789e15, 6.02e23])
def test_ds_values_are_at_most_16_characters_and_accurate(value: float) -> None:
    text = format_ds(value)
    assert len(text) <= 16
    assert text != "-0"
    assert float(text) == pytest.approx(value, abs=5e-5, rel=1e-9 if abs(value) < 1e9 else 1e-6)


def test_ds_rejects_non_finite() -> None:
    with pytest.raises(OutputError, match="finite"):
        format_ds(float("nan"))


def test_contour_data_fits_the_explicit_vr_length_limit() -> None:
    rng = np.random.default_rng(1)
    small = contour_data(rng.uniform(-500, 500, (10, 3)))
    assert all(len(v) <= 16 for v in small) and len(small) == 30
    huge = contour_data(rng.uniform(-500, 500, (3000, 3)))  # too long with 4 decimals
    assert sum(len(v) for v in huge) + len(huge) - 1 <= MAX_VALUE_BYTES
    assert all(len(v) <= 16 for v in huge)
    assert max(len(v.partition(".")[2]) for v in huge) < 4  # fell back to fewer decimals
    with pytest.raises(OutputError, match="64 KiB"):
        contour_data(rng.uniform(-500, 500, (20000, 3)))


@pytest.mark.parametrize("position", sorted(ORIENTATIONS))
def test_contour_points_map_back_to_the_right_voxels_in_any_orientation(position: str) -> None:
    """Contours -> patient space with the slice plane -> voxel indices with the volume's inverse."""
    spacing = (0.7, 1.3, 2.5)
    direction = direction_from_iop(ORIENTATIONS[position])
    origin = (120.0, -80.0, 300.0)
    shape = (4, 40, 50)
    rng = np.random.default_rng(7)
    masks = np.zeros(shape, dtype=bool)
    masks[:, 5:30, 8:20] = True  # asymmetric: a mirror image would not match
    masks[:, 10:14, 30:45] = rng.random((shape[0], 4, 15)) > 0.3
    volume = Volume(masks.astype(np.uint8), spacing, origin, direction)
    d = np.asarray(direction).reshape(3, 3)
    for k in range(shape[0]):
        plane = SlicePlane(tuple(np.asarray(origin) + d[:, 2] * spacing[2] * k),  # type: ignore[arg-type]
                           tuple(d[:, 0]), tuple(d[:, 1]), (spacing[1], spacing[0]))  # type: ignore[arg-type]
        polygons = slice_contours(masks[k], plane.spacing_rc)
        back = []
        for poly in polygons:
            kji = patient_to_voxel(volume, plane.to_patient(poly))
            assert np.allclose(kji[:, 0], k, atol=1e-9)  # exactly on the image plane
            back.append(kji[:, 1:])
            rc, distance = plane.to_pixels(plane.to_patient(poly))
            assert np.allclose(rc, poly) and np.allclose(distance, 0)
        assert np.array_equal(skimage_xor(back, shape[1:]), masks[k])


def _area(poly: np.ndarray) -> float:
    r, c = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(r, np.roll(c, -1)) - np.dot(c, np.roll(r, -1)))


def test_contour_data_fast_path_matches_format_ds() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.uniform(-2000, 2000, 300), [0.0, -0.0, -1e-6, 5.0, -100.0, 99999.99995]])
    assert contour_data(values.reshape(-1, 3)) == [format_ds(v) for v in values]
