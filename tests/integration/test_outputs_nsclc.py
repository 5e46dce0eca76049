"""SEG and RTSTRUCT on the real NSCLC CT: dciodvfy, highdicom read-back, plastimatch round trip.

The data is CC BY-NC (test use only, read from ../shared/data, never copied). GTV-1 has no catalogue
entry and is left out (its voxels become background); the body outline (External) is added as an
extra mask made by thresholding, so the overlapping-segment path and a large contour are exercised.
dciodvfy and plastimatch missing is a failure, not a skip.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dicom_node.outputs.common import write_dataset
from dicom_node.outputs.rtstruct.builder import build_rtstruct
from dicom_node.outputs.seg import build_seg
from dicom_node.series_io import CtSeries, load_series
from segmenter.core.metrics import dice
from segmenter.core.result import LabelledStructure, SegmentationResult
from segmenter.core.volume import Volume
from tests.outputs_helpers import identity
from tests.peers import dciodvfy_errors, require_tool

CATALOGUE_NAMES = {"Spinal-Cord": "SpinalCord", "Lung-Left": "Lung_L", "Lung-Right": "Lung_R"}
MIN_VOLUME_CM3 = 10.0


@dataclass(frozen=True)
class Case:
    ct_dir: Path
    series: CtSeries
    result: SegmentationResult
    masks: dict[str, np.ndarray]
    seg_path: Path
    rtstruct_path: Path
    timings: dict[str, float]


def _body(hu: np.ndarray) -> np.ndarray:
    body = hu > -400
    components, _ = ndimage.label(body)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(np.argmax(sizes))
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


@pytest.fixture(scope="module")
def case(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Case:
    root = shared_data / "ct" / "nsclc_lung1_001"
    series = load_series(sorted(p for p in (root / "ct").iterdir() if p.is_file()))
    labels = Volume.read(root / "derived" / "labels_from_rtstruct.nii.gz")
    for what in ("spacing", "origin", "direction"):
        assert np.allclose(getattr(labels, what), getattr(series.volume, what), atol=1e-4), what
    names = {int(k): v for k, v in json.loads((root / "derived" / "labels.json").read_text()).items()}
    array = labels.array.astype(np.uint8)
    structures = []
    for value, name in names.items():
        if name in CATALOGUE_NAMES:
            structures.append(LabelledStructure(value, CATALOGUE_NAMES[name]))
        elif value:
            array[array == value] = 0  # GTV-1: no catalogue entry
    body = _body(series.volume.array)
    result = SegmentationResult(series.volume.with_array(array), tuple(structures), "test-model", "1.2.3",
                                {"External": body})
    masks = {s.name: array == s.label for s in structures} | {"External": body}
    out = tmp_path_factory.mktemp("nsclc_outputs")
    timings = {}
    start = time.perf_counter()
    seg = build_seg(series, result, identity())
    timings["build_seg"] = time.perf_counter() - start
    start = time.perf_counter()
    rtstruct = build_rtstruct(series, result, identity())
    timings["build_rtstruct"] = time.perf_counter() - start
    start = time.perf_counter()
    write_dataset(seg, out / "seg.dcm")
    write_dataset(rtstruct, out / "rtstruct.dcm")
    timings["write_both"] = time.perf_counter() - start
    print("timings (s):", {k: round(v, 2) for k, v in timings.items()})
    return Case(root / "ct", series, result, masks, out / "seg.dcm", out / "rtstruct.dcm", timings)


@pytest.mark.parametrize("which", ["seg", "rtstruct"])
def test_dciodvfy_reports_no_error(case: Case, which: str) -> None:
    path = case.seg_path if which == "seg" else case.rtstruct_path
    errors, report = dciodvfy_errors(path)
    print(f"dciodvfy {path.name}:\n{report}")
    assert errors == [], "\n".join(errors)
    assert "SEGMENTATION" in report.upper() or "RTSTRUCTURESET" in report.upper().replace(" ", "")


def test_seg_reads_back_voxel_for_voxel(case: Case) -> None:
    seg = hd.seg.segread(case.seg_path)
    uids = [str(ds.SOPInstanceUID) for ds in case.series.datasets]
    labels = {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}
    assert sorted(labels.values()) == sorted(case.masks)
    for number, name in labels.items():
        pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[number],
                                                   assert_missing_frames_are_empty=True)
        mask = case.masks[name]
        assert np.array_equal(pixels[..., 0].astype(bool), mask), name
    # frames only where a segment is present
    expected_frames = sum(int(m.any(axis=(1, 2)).sum()) for m in case.masks.values())
    assert int(seg.NumberOfFrames) == expected_frames


def test_rtstruct_round_trips_through_plastimatch(case: Case, tmp_path: Path) -> None:
    tool = require_tool("plastimatch")
    out = tmp_path / "plastimatch"
    # --xor-contours: the even-odd rule of planning systems (a contour inside another is a hole);
    # plastimatch's default ORs the contours of a slice and would fill the holes
    proc = subprocess.run([tool, "convert", "--input", str(case.rtstruct_path), "--referenced-ct",
                           str(case.ct_dir), "--output-prefix", str(out), "--xor-contours"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reference = case.result.labels.to_sitk()
    voxel_cm3 = case.series.volume.voxel_volume_mm3 / 1000.0
    figures = {}
    for name, mask in case.masks.items():
        files = list(out.glob(f"{name}.*"))
        assert files, f"plastimatch wrote no mask for {name}: {sorted(p.name for p in out.iterdir())}"
        image = sitk.ReadImage(str(files[0]))
        # plastimatch writes on its own grid: compare in physical space (nearest neighbour onto the CT grid)
        on_grid = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        back = sitk.GetArrayFromImage(on_grid) > 0
        figures[name] = (dice(back, mask), float(mask.sum() * voxel_cm3))
    print("plastimatch Dice (structure: dice, cm3):", {k: (round(d, 4), round(v, 1)) for k, (d, v) in figures.items()})
    for name, (score, volume_cm3) in figures.items():  # the bars
        assert score >= (0.98 if volume_cm3 >= MIN_VOLUME_CM3 else 0.90), f"{name}: Dice {score:.4f}"


def test_rtstruct_references_every_image_and_contours_reference_their_slice(case: Case) -> None:
    rt = pydicom.dcmread(case.rtstruct_path)
    uids = [str(ds.SOPInstanceUID) for ds in case.series.datasets]
    refs = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert [str(r.ReferencedSOPInstanceUID) for r in refs.ContourImageSequence] == uids
    z_by_uid = {str(ds.SOPInstanceUID): float(ds.ImagePositionPatient[2]) for ds in case.series.datasets}
    for roi in rt.ROIContourSequence:
        for contour in roi.ContourSequence:
            z = {float(v) for v in contour.ContourData[2::3]}
            assert z == {z_by_uid[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]}
            assert all(len(str(v)) <= 16 for v in contour.ContourData)


def test_build_time_is_modest(case: Case) -> None:
    # 512 x 512 x 134, 4 structures including the body outline; generous bounds against regressions
    assert case.timings["build_seg"] < 20 and case.timings["build_rtstruct"] < 30, case.timings
