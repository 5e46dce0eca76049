"""Outputs on series made in memory in non-HFS positions: valid for dciodvfy, written and read back."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from dicom_node.outputs.common import write_dataset
from dicom_node.outputs.rtstruct.builder import build_rtstruct
from dicom_node.outputs.seg import build_seg
from tests.outputs_helpers import identity, synthetic_series
from tests.peers import dciodvfy_errors
from tests.unit.test_outputs import phantom, result_for


@pytest.mark.parametrize("position", ["FFS", "HFP", "OBLIQUE"])
def test_non_hfs_outputs_pass_dciodvfy_and_seg_reads_back(tmp_path: Path, position: str) -> None:
    hu, labels, body = phantom((6, 40, 48))
    series, _ = synthetic_series(hu, position)
    result = result_for(series, labels, body)
    write_dataset(build_seg(series, result, identity()), tmp_path / "seg.dcm")
    write_dataset(build_rtstruct(series, result, identity()), tmp_path / "rtstruct.dcm")
    for name in ("seg.dcm", "rtstruct.dcm"):
        errors, report = dciodvfy_errors(tmp_path / name)
        assert errors == [], f"{name}:\n{report}"
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    uids = [str(ds.SOPInstanceUID) for ds in series.datasets]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2, 3], assert_missing_frames_are_empty=True)
    for index, mask in enumerate([labels == 1, labels == 2, body]):
        assert np.array_equal(pixels[..., index].astype(bool), mask)
