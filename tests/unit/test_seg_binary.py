"""The fast BINARY SEG path (seg_binary) writes what highdicom's frame-by-frame encoder writes."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

import dicom_node.outputs.seg as seg_module
from dicom_node.outputs.common import write_dataset
from dicom_node.outputs.seg import build_seg
from tests.outputs_helpers import ORIENTATIONS, identity, synthetic_series
from tests.unit.test_outputs import phantom, result_for


def _frames(ds: pydicom.Dataset) -> list[tuple[object, ...]]:
    return [(tuple(int(v) for v in item.FrameContentSequence[0].DimensionIndexValues),
             int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
             tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient),
             str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID))
            for item in ds.PerFrameFunctionalGroupsSequence]


def _write_both(tmp_path: Path, shape: tuple[int, int, int], position: str,
                monkeypatch: pytest.MonkeyPatch) -> tuple[pydicom.Dataset, pydicom.Dataset, np.ndarray, list[str]]:
    hu, labels, _body = phantom(shape)
    labels[2] = 0  # a plane with no segment at all: omitted, later planes renumbered
    series, _ = synthetic_series(hu, position)
    made: list[object] = []
    real = seg_module.build_binary
    with monkeypatch.context() as spied:
        spied.setattr(seg_module, "build_binary", lambda *args: made.append(real(*args)) or made[-1])
        fast = build_seg(series, result_for(series, labels), identity())
    assert len(made) == 1 and (made[0] is fast) == (shape[1] * shape[2] % 8 == 0)  # fast path where it applies
    write_dataset(fast, tmp_path / "fast.dcm")
    with monkeypatch.context() as patched:
        patched.setattr(seg_module, "build_binary", lambda *args: None)
        slow = build_seg(series, result_for(series, labels), identity())
    write_dataset(slow, tmp_path / "slow.dcm")
    uids = [str(ds.SOPInstanceUID) for ds in series.datasets]
    return pydicom.dcmread(tmp_path / "fast.dcm"), pydicom.dcmread(tmp_path / "slow.dcm"), labels, uids


@pytest.mark.parametrize("position", sorted(ORIENTATIONS))
def test_fast_binary_equals_highdicom_encoding(tmp_path: Path, position: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow, labels, uids = _write_both(tmp_path, (5, 24, 30), position, monkeypatch)
    assert int(fast.NumberOfFrames) == int(slow.NumberOfFrames) == len(fast.PerFrameFunctionalGroupsSequence)
    assert fast.PixelData == slow.PixelData
    assert _frames(fast) == _frames(slow)
    ignored = {"SOPInstanceUID", "SeriesInstanceUID", "ContentDate", "ContentTime", "InstanceCreationDate",
               "InstanceCreationTime",
               "SegmentSequence", "PerFrameFunctionalGroupsSequence", "PixelData", "DimensionOrganizationSequence",
               "DimensionIndexSequence", "ContributingEquipmentSequence"}
    for elem in slow:
        if elem.keyword and elem.keyword not in ignored:
            assert fast.get(elem.keyword) == elem.value, elem.keyword
    assert [[int(i.DimensionIndexPointer), int(i.FunctionalGroupPointer)] for i in fast.DimensionIndexSequence] == [
        [int(i.DimensionIndexPointer), int(i.FunctionalGroupPointer)] for i in slow.DimensionIndexSequence]
    assert len(fast.ContributingEquipmentSequence) == len(slow.ContributingEquipmentSequence)
    assert [s.SegmentLabel for s in fast.SegmentSequence] == [s.SegmentLabel for s in slow.SegmentSequence]
    back = hd.seg.segread(tmp_path / "fast.dcm")
    pixels = back.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    assert np.array_equal(pixels, labels)


def test_frames_not_whole_bytes_fall_back_to_highdicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 23 x 29 pixels: frames are not whole bytes, so highdicom packs them contiguously itself
    fast, slow, labels, uids = _write_both(tmp_path, (5, 23, 29), "HFS", monkeypatch)
    assert fast.PixelData == slow.PixelData
    back = hd.seg.segread(tmp_path / "fast.dcm")
    pixels = back.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    assert np.array_equal(pixels, labels)
