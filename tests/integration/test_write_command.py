"""``dicom-node write``: label maps from elsewhere -> SEG + RTSTRUCT, on real CT (JPEG 2000 with blank UIDs; NSCLC).

The TotalSegmentator example is stored in LAS (y flipped) and must be resampled in physical space:
the check is the CT under each segment (liver ~89 HU, spleen ~80 HU, aorta ~177 HU per SOURCE.md),
which a front-back mirror would ruin. NSCLC data is CC BY-NC: read from ../shared/data, never copied.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_node.convert import fill_missing_uids, resample_labels, result_from_labels
from dicom_node.errors import OutputError
from dicom_node.series_io import load_series
from segmenter.core.catalogue import builtin_mapping
from segmenter.core.volume import Volume
from tests.conftest import REPO
from tests.peers import dciodvfy_errors

CONFIG = REPO / "config" / "node.example.toml"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_node.cli", "write", "--config", str(CONFIG), *args],
                          capture_output=True, text=True, timeout=300)


def _series(folder: Path):  # type: ignore[no-untyped-def]
    return load_series(sorted(p for p in folder.iterdir() if p.is_file()))


@pytest.fixture(scope="module")
def totalseg(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = shared_data / "ct" / "totalseg_example_dicom"
    out = tmp_path_factory.mktemp("write_totalseg")
    proc = _cli("--ct", str(root / "ct"), "--labels", str(root / "example_seg_dicom.nii.gz"),
                "--structures", "totalsegmentator_total", "--out", str(out), "--model-id", "TotalSegmentator",
                "--model-version", "fast")
    assert proc.returncode == 0, proc.stderr
    assert f"SEG {out / 'seg.dcm'}" in proc.stdout and f"RTSTRUCT {out / 'rtstruct.dcm'}" in proc.stdout
    assert "no StudyInstanceUID, SeriesInstanceUID" in proc.stderr  # blank UIDs replaced, and said so
    return root, out / "seg.dcm", out / "rtstruct.dcm"


@pytest.mark.parametrize("which", [1, 2])
def test_totalseg_outputs_have_no_dciodvfy_error(totalseg: tuple[Path, Path, Path], which: int) -> None:
    errors, report = dciodvfy_errors(totalseg[which])
    assert errors == [], report


def test_totalseg_seg_lands_on_the_right_anatomy(totalseg: tuple[Path, Path, Path]) -> None:
    root, seg_path, _ = totalseg
    series = _series(root / "ct")
    seg = hd.seg.segread(seg_path)
    numbers = {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}
    uids = [str(ds.SOPInstanceUID) for ds in series.datasets]
    expected_hu = {"Liver": 89, "Spleen": 80, "A_Aorta": 177, "VB_T12": 267}
    for name, hu in expected_hu.items():
        mask = seg.get_pixels_by_source_instance(uids, segment_numbers=[numbers[name]])[..., 0].astype(bool)
        assert abs(float(series.volume.array[mask].mean()) - hu) < 8, name
    # the whole label map round-trips: every segment equals the resampled label map
    labels = resample_labels(Volume.read(root / "example_seg_dicom.nii.gz"), series.volume).array
    mapping = builtin_mapping("totalsegmentator_total")
    by_name = {name: label for label, name in mapping.items()}
    for name, number in numbers.items():
        pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[number])[..., 0].astype(bool)
        assert np.array_equal(pixels, labels == by_name[name]), name
    assert sorted(numbers) == sorted(mapping[v] for v in np.unique(labels) if v)


def test_totalseg_laterality_modifier_and_codes(totalseg: tuple[Path, Path, Path]) -> None:
    seg = pydicom.dcmread(totalseg[1])
    items = {str(item.SegmentLabel): item for item in seg.SegmentSequence}
    humerus = items["Humerus_L"].SegmentedPropertyTypeCodeSequence[0]
    assert humerus.CodeValue == "85050009" and humerus.CodingSchemeDesignator == "SCT"
    assert humerus.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"
    assert all(i.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT" for i in items.values())
    assert items["Liver"].SegmentAlgorithmName == "TotalSegmentator"


def test_nsclc_label_map_on_another_grid(shared_data: Path, tmp_path: Path) -> None:
    """The derived NSCLC labels flipped to LAS, cropped and GTV removed come back voxel for voxel."""
    root = shared_data / "ct" / "nsclc_lung1_001"
    image = sitk.ReadImage(str(root / "derived" / "labels_from_rtstruct.nii.gz"))
    array = sitk.GetArrayFromImage(image)
    array[array == 1] = 0  # GTV-1 has no catalogue entry
    clean = sitk.GetImageFromArray(array)
    clean.CopyInformation(image)
    moved = sitk.Flip(clean, [False, True, False])  # LAS like TotalSegmentator's NIfTI, same physical place
    moved = moved[:, :, 10:120]  # a crop: slices outside it are background
    sitk.WriteImage(moved, str(tmp_path / "labels_las.nii.gz"))
    (tmp_path / "structures.json").write_text(json.dumps(
        {"model_id": "colleague-model", "model_version": "3",
         "labels": {"2": "SpinalCord", "3": "Lung_L", "4": "Lung_R"}}))
    proc = _cli("--ct", str(root / "ct"), "--labels", str(tmp_path / "labels_las.nii.gz"), "--structures",
                str(tmp_path / "structures.json"), "--out", str(tmp_path / "out"), "--seg")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "out" / "rtstruct.dcm").exists()
    series = _series(root / "ct")
    seg = hd.seg.segread(tmp_path / "out" / "seg.dcm")
    uids = [str(ds.SOPInstanceUID) for ds in series.datasets]
    expected = array.copy()
    expected[:10] = 0
    expected[120:] = 0
    for item in seg.SegmentSequence:
        label = {"SpinalCord": 2, "Lung_L": 3, "Lung_R": 4}[str(item.SegmentLabel)]
        pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[int(item.SegmentNumber)],
                                                   assert_missing_frames_are_empty=True)[..., 0]
        assert np.array_equal(pixels.astype(bool), expected == label), item.SegmentLabel
        assert item.SegmentAlgorithmName == "colleague-model"


def test_unmapped_and_unknown_labels_fail_with_the_reason(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "ct" / "nsclc_lung1_001"
    labels = str(root / "derived" / "labels_from_rtstruct.nii.gz")
    (tmp_path / "s.json").write_text(json.dumps({"2": "SpinalCord", "3": "Lung_L", "4": "Lung_R"}))
    proc = _cli("--ct", str(root / "ct"), "--labels", labels, "--structures", str(tmp_path / "s.json"),
                "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "value(s) [1] have no structure in the structures file" in proc.stderr
    (tmp_path / "s.json").write_text(json.dumps({"1": "GTV-1"}))
    proc = _cli("--ct", str(root / "ct"), "--labels", labels, "--structures", str(tmp_path / "s.json"),
                "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "not in the catalogue: 1='GTV-1'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def _volume(array: np.ndarray, origin: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Volume:
    return Volume(array, (1.0, 1.0, 2.0), origin, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def test_resample_labels_rules() -> None:
    reference = _volume(np.zeros((4, 5, 6), dtype=np.int16))
    same = resample_labels(_volume(np.full((4, 5, 6), 3, dtype=np.int64)), reference)
    assert same.array.dtype == np.uint8 and int(same.array.max()) == 3
    big = resample_labels(_volume(np.full((4, 5, 6), 300, dtype=np.int32)), reference)
    assert big.array.dtype == np.uint16
    shifted = resample_labels(_volume(np.ones((4, 5, 6), dtype=np.uint8), origin=(2.0, 0.0, 0.0)), reference)
    assert shifted.array[:, :, :2].sum() == 0 and shifted.array[:, :, 2:].all()
    with pytest.raises(OutputError, match="whole numbers"):
        resample_labels(_volume(np.full((4, 5, 6), 0.5)), reference)
    with pytest.raises(OutputError, match="negative"):
        resample_labels(_volume(np.full((4, 5, 6), -1, dtype=np.int16)), reference)
    with pytest.raises(OutputError, match="does not overlap"):
        resample_labels(_volume(np.ones((4, 5, 6), dtype=np.uint8), origin=(500.0, 0.0, 0.0)), reference)


def test_result_from_labels_and_missing_uids(shared_data: Path) -> None:
    labels = _volume(np.array([[[0, 1], [2, 2]]], dtype=np.uint8))
    result = result_from_labels(labels, {1: "Liver", 2: "Spleen", 7: "Heart"}, "m", "1")
    assert [s.name for s in result.structures] == ["Liver", "Spleen", "Heart"]
    with pytest.raises(OutputError, match=r"value\(s\) \[2\]"):
        result_from_labels(labels, {1: "Liver"})
    series = _series(shared_data / "ct" / "totalseg_example_dicom" / "ct")
    assert series.study_uid == "" and series.series_uid == ""
    fixed = fill_missing_uids(series, "1.2.826.0.1.3680043.8.498")
    assert fixed.study_uid.startswith("1.2.826.0.1.3680043.8.498.") and fixed.series_uid != fixed.study_uid
    assert {str(ds.StudyInstanceUID) for ds in fixed.datasets} == {fixed.study_uid}
    assert series.datasets[0].get("StudyInstanceUID", "") == ""  # the original headers are untouched
    assert fill_missing_uids(fixed, "1.2.3") is fixed
