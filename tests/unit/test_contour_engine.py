"""The vectorised RTSTRUCT path: stack tracing, gated decimation, the exact raster check, DS bytes.

References are independent of the code under test: skimage's find_contours and polygon fill,
Python's own float formatting (``format_ds``), pydicom reading the encoded bytes back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from scipy import ndimage
from skimage.measure import find_contours

from dicom_node.errors import OutputError
from dicom_node.outputs.common import format_ds, label_boxes, write_dataset
from dicom_node.outputs.rtstruct import contours, decimation
from dicom_node.outputs.rtstruct.contours import ContourOptions, stack_contours
from dicom_node.outputs.rtstruct.encoding import (
    MAX_VALUE_BYTES,
    contour_sequence,
    format_ds_values,
    image_reference,
)
from dicom_node.outputs.rtstruct.tracing import TracedPolygons, trace_stack
from tests.unit.test_contours import skimage_xor


def smooth_masks(seed: int, shape: tuple[int, int, int] = (4, 60, 70)) -> np.ndarray:
    """Random blobs with holes and islands: boundaries with every slope, not just staircases."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), (0, rng.uniform(1, 4), rng.uniform(1, 4)))
    mask = field > np.median(field)
    if seed % 3 == 0:
        mask ^= rng.random(shape) > 0.97  # single-pixel islands and pinholes
    return mask


def slice_polygons(polygons, k: int) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    return [polygons.polygon(n) for n in range(polygons.count) if polygons.slices[n] == k]


@pytest.mark.parametrize("seed", range(8))
def test_stack_tracing_matches_skimage_and_orients_inside_left(seed: int) -> None:
    mask = smooth_masks(seed)
    traced = trace_stack(mask)
    for k in range(mask.shape[0]):
        ours = slice_polygons(traced, k)
        padded = np.pad(mask[k], 1).astype(float)
        reference = [c[:-1] - 1 for c in find_contours(padded, 0.5, fully_connected="low")]
        assert len(ours) == len(reference)
        # the same vertices, polygon by polygon (find_contours may start and turn the other way)
        assert sorted(map(tuple, np.concatenate(ours).round(3).tolist())) == \
            sorted(map(tuple, np.concatenate(reference).round(3).tolist()))
        assert np.array_equal(skimage_xor(ours, mask[k].shape), mask[k])
    # every gate points from its vertex to an inside pixel, away from an outside one, and lies to the
    # left of the edge leaving the vertex
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    k = np.repeat(traced.slices, np.diff(traced.starts))
    inside = np.rint(traced.points + traced.gates).astype(int) + 1
    outside = np.rint(traced.points - traced.gates).astype(int) + 1
    assert padded[k, inside[:, 0], inside[:, 1]].all()
    assert not padded[k, outside[:, 0], outside[:, 1]].any()
    _, nxt = decimation._ring_neighbours(traced.starts)
    edge = traced.points[nxt] - traced.points
    assert np.all(edge[:, 0] * traced.gates[:, 1] - edge[:, 1] * traced.gates[:, 0] > 0)


def _distance_to_polygon(points: np.ndarray, polygon: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    p, a = points * np.asarray(spacing), polygon * np.asarray(spacing)
    ab = np.roll(a, -1, axis=0) - a
    t = np.clip(((p[:, None, :] - a[None]) * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1)[None], 1e-12), 0, 1)
    return np.linalg.norm(p[:, None, :] - (a[None] + t[..., None] * ab[None]), axis=-1).min(axis=1)


@pytest.mark.parametrize("seed", range(10))
def test_default_decimation_keeps_raster_margin_and_tolerance(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    spacing = (0.9765625, 0.9765625) if seed % 2 else (float(rng.uniform(0.4, 2)), float(rng.uniform(0.4, 2)))
    tolerance = [0.5, 1.0, 2.0, 3.0][seed % 4]
    mask = smooth_masks(seed)
    traced = decimation.remove_collinear(trace_stack(mask))
    result = stack_contours(mask, spacing, ContourOptions(tolerance_mm=tolerance))
    assert result.count == traced.count and len(result.points) < len(traced.points)
    yy, xx = np.mgrid[: mask.shape[1], : mask.shape[2]]
    centres = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(float)
    for n in range(result.count):
        simplified, original = result.polygon(n), traced.polygon(n)
        assert len(simplified) >= 3
        # the boundary moves by at most the tolerance, both ways
        assert _distance_to_polygon(original, simplified, spacing).max() <= tolerance + 1e-9
        assert _distance_to_polygon(simplified, original, spacing).max() <= tolerance + 1e-9
        # no pixel centre within the margin of a decimated edge (pixel units)
        near = centres[np.all(np.abs(centres - simplified.mean(axis=0)) <= np.ptp(simplified, axis=0) / 2 + 1, axis=1)]
        assert _distance_to_polygon(near, simplified, (1.0, 1.0)).min() >= decimation.GATE_MARGIN_PIXELS
    for k in range(mask.shape[0]):
        assert np.array_equal(skimage_xor(slice_polygons(result, k), mask[k].shape), mask[k])


def test_raster_check_finds_the_slices_whose_fill_changed() -> None:
    mask = smooth_masks(3)
    loose = decimation.douglas_peucker(decimation.remove_collinear(trace_stack(mask)), (1.0, 1.0), 3.0)
    changed = [k for k in range(mask.shape[0])
               if not np.array_equal(skimage_xor(slice_polygons(loose, k), mask[k].shape), mask[k])]
    assert changed  # 3 mm without gates does change the raster
    assert set(decimation.raster_mismatch(loose, mask).tolist()) >= set(changed)
    exact = trace_stack(mask)
    assert decimation.raster_mismatch(exact, mask).size == 0


def test_raster_check_refuses_an_edge_through_a_pixel_centre() -> None:
    mask = np.zeros((1, 7, 7), dtype=bool)
    mask[0, 2:5, 2:5] = True
    square = trace_stack(mask)
    assert decimation.raster_mismatch(square, mask).size == 0

    def polygon(points: list[tuple[float, float]]) -> TracedPolygons:
        return TracedPolygons(np.asarray(points), np.zeros((len(points), 2)), np.array([0, len(points)]),
                              np.zeros(1, dtype=np.int64))

    # the right edge runs exactly through the centres of column 4: a scanline fill still gives the
    # mask, but another rasteriser (or rounding) may not, so the check refuses it
    on_centres = polygon([(1.5, 1.5), (1.5, 4.0), (4.5, 4.0), (4.5, 1.5)])
    assert np.array_equal(skimage_xor([on_centres.points], (7, 7)), mask[0])
    assert decimation.raster_mismatch(on_centres, mask).tolist() == [0]
    # half a pixel further out it is fine; within the margin of the centres it is not
    assert decimation.raster_mismatch(polygon([(1.5, 1.5), (1.5, 4.5), (4.5, 4.5), (4.5, 1.5)]), mask).size == 0
    near = 4.0 + decimation.GATE_MARGIN_PIXELS / 2
    assert decimation.raster_mismatch(polygon([(1.5, 1.5), (1.5, near), (4.5, near), (4.5, 1.5)]), mask).size == 1


def test_slices_failing_the_check_are_redone_within_the_safe_tolerance(monkeypatch: pytest.MonkeyPatch) -> None:
    original = decimation.douglas_peucker
    calls: list[float] = []

    def broken(polygons, spacing_rc, tolerance_mm, gated=False, margin=decimation.GATE_MARGIN_PIXELS):  # type: ignore[no-untyped-def]
        calls.append(tolerance_mm)
        # the gated pass forgets its gates: the raster changes and the check must notice
        return original(polygons, spacing_rc, 3.0 if gated else tolerance_mm)

    monkeypatch.setattr(contours.decimation, "douglas_peucker", broken)
    mask = smooth_masks(5)
    result = stack_contours(mask, (1.0, 1.0))
    assert calls[0] == 0.5 and calls[1] == pytest.approx(contours.SAFE_TOLERANCE_PIXELS)
    for k in range(mask.shape[0]):
        assert np.array_equal(skimage_xor(slice_polygons(result, k), mask[k].shape), mask[k])
    assert np.all(np.diff(result.slices) >= 0)  # still in slice order


def test_island_threshold_on_a_stack_counts_per_slice() -> None:
    mask = np.zeros((2, 10, 10), dtype=bool)
    mask[:, 4, 4] = True  # one pixel per slice: a 2-voxel column in 3D, still an island on each slice
    mask[1, 6:9, 6:9] = True
    result = stack_contours(mask, (1.0, 1.0), ContourOptions(min_island_pixels=2))
    assert result.count == 1 and result.slices.tolist() == [1]


def test_label_boxes_equal_find_objects() -> None:
    rng = np.random.default_rng(2)
    labels = np.zeros((20, 30, 40), dtype=np.uint8)
    labels[3:9, 5:20, 7:30] = rng.integers(0, 6, (6, 15, 23))
    labels[15, 25, 1] = 9
    assert label_boxes(labels) == ndimage.find_objects(labels)
    assert label_boxes(np.zeros((2, 3, 4), dtype=np.uint8)) == []


def test_vectorised_ds_text_equals_format_ds() -> None:
    rng = np.random.default_rng(4)
    values = np.concatenate([
        rng.uniform(-600, 600, 20000), rng.uniform(-1, 1, 2000) * 10.0 ** rng.integers(-6, 7, 2000),
        np.round(rng.uniform(-500, 500, 2000), 4) + 0.00005,  # near rounding ties
        [0.0, -0.0, 0.00005, -0.00005, 1e-9, -1e-9, 9999999.99994, -9999999.99996, 0.5, -249.51171875]])
    text, ends = format_ds_values(values)
    strings = text.decode("ascii").split("\\")[:-1]
    assert strings == [format_ds(v) for v in values]
    assert ends[-1] == len(text) and all(len(s) <= 16 for s in strings)
    assert format_ds_values(np.array([1.0, np.nan])) is None
    assert format_ds_values(np.array([1.0, 2e7])) is None


def test_contour_sequence_bytes_read_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    points = rng.uniform(-300, 300, (3 + 4 + 3000, 3))
    starts = np.array([0, 3, 7, len(points)])
    refs = [image_reference("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{n}") for n in range(3)]
    encoded = contour_sequence(points, starts, refs)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.3", "1.2.3.99"
    roi = Dataset()
    roi.ReferencedROINumber = 1
    ds.ROIContourSequence = [roi]
    roi[0x30060040] = pydicom.dataelem.RawDataElement(pydicom.tag.BaseTag(0x30060040), "SQ", len(encoded),
                                                      encoded, 0, False, True)
    write_dataset(ds, tmp_path / "rt.dcm")
    back = pydicom.dcmread(tmp_path / "rt.dcm").ROIContourSequence[0].ContourSequence
    assert [int(c.ContourNumber) for c in back] == [1, 2, 3]
    assert [int(c.NumberOfContourPoints) for c in back] == [3, 4, 3000]
    for n, contour in enumerate(back):
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == f"1.2.3.{n}"
        values = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
        decimals = 4 if n < 2 else 2  # 3000 points do not fit 64 KiB with 4 decimals
        assert max(len(str(v).partition(".")[2]) for v in contour.ContourData) == decimals
        assert np.allclose(values, points[starts[n]:starts[n + 1]], atol=0.51 * 10.0 ** -decimals, rtol=0)
        assert all(len(str(v)) <= 16 for v in contour.ContourData)
    assert len("\\".join(format_ds(v) for v in points[7:].ravel())) > MAX_VALUE_BYTES  # why it has 2 decimals
    with pytest.raises(OutputError, match="3"):
        contour_sequence(points[:2], np.array([0, 2]), refs[:1])
    with pytest.raises(OutputError, match="64 KiB"):
        contour_sequence(rng.uniform(-300, 300, (20000, 3)), np.array([0, 20000]), refs[:1])


def test_headers_only_series_has_the_geometry_and_no_pixels(tmp_path: Path) -> None:
    from dicom_node.outputs.preview import render_views
    from dicom_node.series_io import load_series
    from segmenter.core.result import LabelledStructure, SegmentationResult
    from tests.outputs_helpers import synthetic_series

    hu = np.random.default_rng(6).integers(-1000, 1000, (5, 12, 14)).astype(np.int16)
    _, datasets = synthetic_series(hu, "FFS")
    paths = []
    for n, ds in enumerate(datasets):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        paths.append(tmp_path / f"{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    full, headers = load_series(paths), load_series(paths, pixels=False)
    assert full.has_pixels and not headers.has_pixels
    for what in ("shape", "spacing", "origin", "direction"):
        assert getattr(headers.volume, what) == getattr(full.volume, what)
    assert [d.SOPInstanceUID for d in headers.datasets] == [d.SOPInstanceUID for d in full.datasets]
    assert headers.volume.array.strides == (0, 0, 0) and not headers.volume.array.any()  # no memory behind it
    assert np.array_equal(full.volume.array, hu)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[1:4, 3:8, 4:9] = 1
    result = SegmentationResult(headers.volume.with_array(labels), (LabelledStructure(1, "Liver"),), "m", "1")
    with pytest.raises(OutputError, match="without its pixel data"):
        render_views(headers, result)


def test_worker_processes_encode_the_same_contours_as_in_process() -> None:
    from dicom_node.outputs.rtstruct.builder import build_rtstruct
    from tests.outputs_helpers import identity, synthetic_series
    from tests.unit.test_outputs import phantom, result_for

    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "HFP")
    result = result_for(series, labels, body)
    one, two = (build_rtstruct(series, result, identity(), workers=w) for w in (1, 2))
    encoded = [[bytes(roi.get_item(0x30060040).value) for roi in ds.ROIContourSequence] for ds in (one, two)]
    assert len(encoded[0]) == 3 and encoded[0] == encoded[1]
