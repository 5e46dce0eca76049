"""``dicom-node write --sr --preview`` on a real CT (TotalSegmentator's example: JPEG 2000, blank UIDs, LAS labels).

The preview's orientation is checked on anatomy, not on a phantom: the liver (patient right) must
be drawn on the image left and the spleen (patient left) on the image right.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicom_node.convert import (
    fill_missing_uids,
    resample_labels,
    result_from_labels,
    write_objects,
)
from dicom_node.errors import OutputError
from dicom_node.outputs.preview import render_views
from dicom_node.series_io import load_series
from segmenter.core.catalogue import builtin_mapping, lookup
from segmenter.core.volume import Volume
from tests.conftest import REPO
from tests.outputs_helpers import identity
from tests.peers import dciodvfy_errors

CONFIG = REPO / "config" / "node.example.toml"


@pytest.fixture(scope="module")
def written(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = shared_data / "ct" / "totalseg_example_dicom"
    out = tmp_path_factory.mktemp("write_sr_preview")
    proc = subprocess.run([sys.executable, "-m", "dicom_node.cli", "write", "--config", str(CONFIG),
                           "--ct", str(root / "ct"), "--labels", str(root / "example_seg_dicom.nii.gz"),
                           "--structures", "totalsegmentator_total", "--out", str(out), "--seg", "--sr", "--preview"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for kind in ("SEG", "SR", "PREVIEW"):
        assert f"{kind} {out / (kind.lower() + '.dcm')}" in proc.stdout
    return out


def test_written_objects_are_valid_and_the_sr_refers_to_the_seg(written: Path) -> None:
    assert sorted(p.name for p in written.iterdir()) == ["preview.dcm", "preview.png", "seg.dcm", "sr.dcm"]
    for name in ("seg.dcm", "sr.dcm", "preview.dcm"):
        errors, report = dciodvfy_errors(written / name)
        assert errors == [], f"{name}: {report}"
    seg, sr, sc = (pydicom.dcmread(written / n) for n in ("seg.dcm", "sr.dcm", "preview.dcm"))
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == sc.StudyInstanceUID  # the study the UIDs were filled in
    assert len({sr.SeriesInstanceUID, seg.SeriesInstanceUID, sc.SeriesInstanceUID}) == 3
    evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert str(seg.SOPInstanceUID) in evidence
    png = np.asarray(Image.open(written / "preview.png").convert("RGB"))
    assert np.array_equal(png, sc.pixel_array)


def test_preview_puts_the_liver_on_the_image_left_and_the_spleen_on_the_right(shared_data: Path) -> None:
    root = shared_data / "ct" / "totalseg_example_dicom"
    series = fill_missing_uids(load_series(sorted(p for p in (root / "ct").iterdir() if p.is_file())),
                               identity().uid_root)
    labels = resample_labels(Volume.read(root / "example_seg_dicom.nii.gz"), series.volume)
    result = result_from_labels(labels, builtin_mapping("totalsegmentator_total"))
    liver, spleen = lookup("Liver").colour, lookup("Spleen").colour
    others = [lookup(s.name).colour for s in result.structures if s.name not in ("Liver", "Spleen")]
    assert liver not in others and spleen not in others  # a colour found below belongs to that organ
    views, _ = render_views(series, result)
    found = {"Liver": 0, "Spleen": 0}
    for view in views:  # axial and coronal views both have patient right on the image left
        columns = view.rgb.shape[1]
        for name, colour in (("Liver", liver), ("Spleen", spleen)):
            where = np.argwhere(np.all(view.rgb == np.asarray(colour, dtype=np.uint8), axis=-1))
            if len(where) == 0:
                continue
            found[name] += 1
            side = where[:, 1].mean() / columns
            assert (side < 0.5) if name == "Liver" else (side > 0.5), f"{name} in {view.title}: {side:.2f}"
    assert found["Liver"] and found["Spleen"], found


def test_write_objects_refuses_unknown_kinds(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "ct" / "totalseg_example_dicom"
    series = fill_missing_uids(load_series(sorted(p for p in (root / "ct").iterdir() if p.is_file())),
                               identity().uid_root)
    labels = resample_labels(Volume.read(root / "example_seg_dicom.nii.gz"), series.volume)
    result = result_from_labels(labels, builtin_mapping("totalsegmentator_total"))
    with pytest.raises(OutputError, match="output kinds must be some of SEG, RTSTRUCT, SR, PREVIEW"):
        write_objects(series, result, ["PDF"], identity(), tmp_path)
