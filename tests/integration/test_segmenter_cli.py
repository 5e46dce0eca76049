"""``segmenter run`` as a user runs it (the console script in a subprocess): outputs and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segmenter.core.catalogue import load_label_mapping
from tests.unit.test_classical import ORIENTATIONS, make_phantom

SCRIPT = Path(sys.executable).with_name("segmenter")


def _segmenter(*args: str) -> subprocess.CompletedProcess[str]:
    if not SCRIPT.is_file():
        pytest.fail(f"console script {SCRIPT} missing: install the project (pip install -e .)")
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    direction, prone, joined = ORIENTATIONS["FFS"]
    path = tmp_path_factory.mktemp("in") / "phantom.nii.gz"
    make_phantom(direction, prone=prone, joined=joined).volume.write(path)
    return path


def test_run_writes_label_map_masks_and_structures(phantom_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _segmenter("run", str(phantom_file), "--out", str(out), "--model", "builtin")
    assert done.returncode == 0, done.stderr
    assert "classical segmentation done" in done.stderr  # progress is logged to stderr
    source = sitk.ReadImage(str(phantom_file))
    labels = sitk.ReadImage(str(out / "labels.nii.gz"))
    assert labels.GetSize() == source.GetSize()
    assert np.allclose(labels.GetOrigin(), source.GetOrigin())
    assert np.allclose(labels.GetDirection(), source.GetDirection())
    assert labels.GetPixelID() == sitk.sitkUInt8
    values = set(np.unique(sitk.GetArrayFromImage(labels)).tolist())
    assert values == {0, 1, 2, 3, 4, 5}
    external = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "masks" / "External.nii.gz")))
    assert set(np.unique(external).tolist()) == {0, 1}
    assert not ((sitk.GetArrayFromImage(labels) > 0) & (external == 0)).any()

    document = json.loads((out / "structures.json").read_text())
    assert document["model_id"] == "builtin-classical"
    assert load_label_mapping(out / "structures.json") == {1: "Lung_L", 2: "Lung_R", 3: "Trachea", 4: "SpinalCord",
                                                           5: "Bone"}
    assert document["labels"]["1"]["type"] == ["44029006", "SCT", "Left lung"]
    assert document["labels"]["1"]["colour"] == [255, 179, 0]
    assert document["extra_masks"]["External"]["file"] == "masks/External.nii.gz"
    assert document["extra_masks"]["External"]["rt_type"] == "EXTERNAL"


def test_run_reads_a_dicom_folder(shared_data: Path, tmp_path: Path) -> None:
    series = shared_data / "ct" / "totalseg_example_dicom" / "ct"
    if not series.is_dir():
        pytest.fail(f"test data missing: {series}")
    done = _segmenter("run", str(series), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz")))
    assert labels.shape == (20, 512, 512)
    assert (labels == 5).sum() > 10_000  # vertebrae, ribs and humeri of this abdomen slab


def _bad_input(kind: str, tmp: Path) -> Path:
    if kind == "garbage":
        path = tmp / "bad.nii.gz"
        path.write_text("not an image")
    elif kind == "empty folder":
        path = tmp / "empty"
        path.mkdir()
    else:
        path = tmp / "missing.nrrd"
    return path


@pytest.mark.parametrize("kind, expected", [
    ("garbage", "cannot read"), ("empty folder", "no DICOM series"), ("missing", "does not exist"),
])
def test_unreadable_input_fails_with_one_line(kind: str, expected: str, tmp_path: Path) -> None:
    source = _bad_input(kind, tmp_path)
    done = _segmenter("run", str(source), "--out", str(tmp_path / "out"))
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and expected in errors[0], done.stderr
    assert "Traceback" not in done.stderr and "sitkImageReaderBase" not in done.stderr
    assert not (tmp_path / "out" / "labels.nii.gz").exists()


def test_unknown_model_names_the_known_ones(phantom_file: Path, tmp_path: Path) -> None:
    done = _segmenter("run", str(phantom_file), "--out", str(tmp_path), "--model", "nope")
    assert done.returncode != 0
    assert "unknown model 'nope'" in done.stderr and "builtin-classical" in done.stderr


def test_usage_error_exits_2() -> None:
    done = _segmenter("run")
    assert done.returncode == 2
    assert "--out" in done.stderr or "input" in done.stderr
