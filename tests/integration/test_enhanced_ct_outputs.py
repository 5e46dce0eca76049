"""Outputs for an Enhanced CT (one multi-frame instance, frames stored out of slice order).

Built from the real NSCLC slices; the label map is the clinical contours on that grid. Every
reference to the source must name the frame, and the SEG read back frame by frame must equal the
label map on the slice that frame is.
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

from dicom_node.series_io import load_series
from tests.enhanced_ct import enhanced_from_slices
from tests.peers import dciodvfy_errors

CONFIG = Path(__file__).resolve().parents[2] / "config" / "node.example.toml"
STRUCTURES = {"1": "Esophagus", "2": "SpinalCord", "3": "Lung_L", "4": "Lung_R"}


@pytest.fixture(scope="module")
def written(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("enhanced")
    slices = sorted((shared_data / "ct" / "nsclc_lung1_001" / "ct").glob("*.dcm"))
    (work / "ct").mkdir()
    enhanced_from_slices(slices).save_as(work / "ct" / "enhanced.dcm", enforce_file_format=True)
    (work / "structures.json").write_text(json.dumps(STRUCTURES))
    labels = shared_data / "ct" / "nsclc_lung1_001" / "derived" / "labels_from_rtstruct.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "dicom_node.cli", "write", "--config", str(CONFIG),
                           "--ct", str(work / "ct"),
                           "--labels", str(labels), "--structures", str(work / "structures.json"),
                           "--out", str(work / "out"), "--sr", "--preview"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, labels


def test_every_output_is_valid(written: tuple[Path, Path]) -> None:
    work, _ = written
    for name in ("seg.dcm", "rtstruct.dcm", "sr.dcm", "preview.dcm"):
        assert dciodvfy_errors(work / "out" / name).errors == [], name


def test_seg_frames_match_the_label_map_on_their_slices(written: tuple[Path, Path]) -> None:
    work, labels_path = written
    series = load_series(sorted((work / "ct").glob("*.dcm")), pixels=False)
    assert sorted(series.frame_numbers) == list(range(1, 135))
    assert list(series.frame_numbers) != sorted(series.frame_numbers)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_path)))
    source_uid = str(series.datasets[0].SOPInstanceUID)
    seg = hd.seg.segread(work / "out" / "seg.dcm")
    numbers = {item.SegmentLabel: int(item.SegmentNumber) for item in seg.SegmentSequence}
    frames = [int(f) for f in series.frame_numbers]
    for label, name in STRUCTURES.items():
        pixels = seg.get_pixels_by_source_frame(source_uid, frames, segment_numbers=[numbers[name]],
                                                assert_missing_frames_are_empty=True)[..., 0].astype(bool)
        # row k of `pixels` is source frame frames[k], i.e. slice k of the volume
        assert np.array_equal(pixels, labels == int(label)), name


def test_preview_references_frames(written: tuple[Path, Path]) -> None:
    work, _ = written
    preview = pydicom.dcmread(work / "out" / "preview.dcm")
    assert preview.SourceImageSequence
    for item in preview.SourceImageSequence:
        assert 1 <= int(item.ReferencedFrameNumber) <= 134


def test_rtstruct_contours_reference_the_frame_they_lie_on(written: tuple[Path, Path]) -> None:
    work, _ = written
    source = pydicom.dcmread(next((work / "ct").glob("*.dcm")), stop_before_pixels=True)
    frame_z = {n: float(item.PlanePositionSequence[0].ImagePositionPatient[2])
               for n, item in enumerate(source.PerFrameFunctionalGroupsSequence, start=1)}
    rt = pydicom.dcmread(work / "out" / "rtstruct.dcm")
    listed = (rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
              .RTReferencedSeriesSequence[0].ContourImageSequence)
    assert sorted(int(item.ReferencedFrameNumber) for item in listed) == list(range(1, 135))
    checked = 0
    for roi in rt.ROIContourSequence:
        for contour in roi.ContourSequence:
            (image,) = contour.ContourImageSequence
            assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
            z = float(contour.ContourData[2])
            assert frame_z[int(image.ReferencedFrameNumber)] == pytest.approx(z, abs=1e-3)
            checked += 1
    assert checked > 100
