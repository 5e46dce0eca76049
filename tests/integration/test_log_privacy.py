"""``dicom-node write`` on a CT whose PatientName has one component: the node's log (stderr) never
carries the name or the ID, and highdicom's INFO lines stay out unless ``-v`` is given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.logging_setup import PERSON_NAME_NOTE
from segmenter.core.volume import Volume
from tests.conftest import REPO
from tests.outputs_helpers import synthetic_series

PATIENT_NAME = "Markername"  # one component: highdicom warns, quoting it
PATIENT_ID = "MRN4711X"


@pytest.fixture(scope="module")
def ct_and_labels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    work = tmp_path_factory.mktemp("log_privacy")
    hu = np.full((6, 24, 20), -1000, dtype=np.int16)
    hu[1:5, 6:18, 5:15] = 60
    series, datasets = synthetic_series(hu, "HFS")
    ct = work / "ct"
    ct.mkdir()
    for n, ds in enumerate(datasets):
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.save_as(ct / f"{n}.dcm", enforce_file_format=True)
    labels = work / "labels.nii.gz"
    v = series.volume
    Volume((hu > 0).astype(np.uint8), v.spacing, v.origin, v.direction).write(labels)
    structures = work / "structures.json"
    structures.write_text(json.dumps({"labels": {"1": "Liver"}}))
    return ct, labels, structures


def _write(ct_and_labels: tuple[Path, Path, Path], out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    ct, labels, structures = ct_and_labels
    proc = subprocess.run([sys.executable, "-m", "dicom_node.cli", "write", "--config",
                           str(REPO / "config" / "node.example.toml"), "--ct", str(ct), "--labels", str(labels),
                           "--structures", str(structures), "--out", str(out), "--sr", *extra],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "seg.dcm").is_file() and (out / "rtstruct.dcm").is_file() and (out / "sr.dcm").is_file()
    return proc


def _highdicom_info(log: str) -> list[str]:
    return [line for line in log.splitlines() if " INFO " in f" {line} " and " highdicom." in line]


def test_the_log_holds_no_patient_name_and_no_highdicom_info(ct_and_labels: tuple[Path, Path, Path],
                                                             tmp_path: Path) -> None:
    log = _write(ct_and_labels, tmp_path / "out").stderr
    assert "INFO" in log and "dicom_node" in log  # the node did log: an empty log would prove nothing
    assert PERSON_NAME_NOTE in log  # highdicom's warning came, rewritten
    assert PATIENT_NAME not in log
    assert PATIENT_ID not in log
    assert _highdicom_info(log) == []
    # the name is in the objects written, as received: only the log leaves it out
    assert str(pydicom.dcmread(tmp_path / "out" / "seg.dcm").PatientName) == PATIENT_NAME


def test_verbose_keeps_highdicom_info_but_still_no_name(ct_and_labels: tuple[Path, Path, Path],
                                                       tmp_path: Path) -> None:
    log = _write(ct_and_labels, tmp_path / "out", "-v").stderr
    assert _highdicom_info(log), log[-2000:]  # so the test above sees highdicom's INFO held back, not absent
    assert PATIENT_NAME not in log
    assert PATIENT_ID not in log
