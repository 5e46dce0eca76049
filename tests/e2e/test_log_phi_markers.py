"""No patient name, ID or birth date in any log line, over the whole path a site runs.

Two CT series with marker values (one with a two-part name, one with a one-part name, which makes
highdicom warn and quote it) go from dcmtk ``storescu`` through ``dicom-node serve`` (listener,
worker and delivery thread, at the log level the systemd units use) to a real Orthanc. Then every
log the node wrote is searched for the markers. The same markers are present in the delivered
objects, so the test can tell a redacted log from a path that never saw the values.
"""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.e2e import node_process as npx
from tests.peers import Orthanc

pytestmark = pytest.mark.e2e

MARKER_PATIENTS = (
    # (PatientName, PatientID, PatientBirthDate)
    ("MARKERNAME^ZQXGIVEN", "ZQX4711ID", "19010203"),
    ("ZQXONEPART", "ZQX4712ID", "19020304"),
)
# every form in which a marker could reach a log line: the raw values, the name's parts, and the
# birth dates as ISO dates
FORBIDDEN = re.compile(
    r"markername|zqx|19010203|19020304|1901-02-03|1902-03-04", re.IGNORECASE)
SLICES = 40  # a contiguous part of the real CT: enough for every structure of the built-in segmenter


def _marker_series(nsclc_ct_files: list[Path], out: Path) -> list[tuple[str, list[Path]]]:
    """Each marker patient gets its own study and series: SLICES contiguous slices of the real CT."""
    headers = [(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in nsclc_ct_files]
    headers.sort(key=lambda h: float(h[1].ImagePositionPatient[2]))
    start = (len(headers) - SLICES) // 2
    chosen = [p for p, _ in headers[start:start + SLICES]]
    series = []
    for n, (name, pid, birth) in enumerate(MARKER_PATIENTS):
        folder = out / f"patient{n}"
        folder.mkdir(parents=True)
        study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
        files = []
        for k, path in enumerate(chosen):
            ds = pydicom.dcmread(path)
            ds.PatientName, ds.PatientID, ds.PatientBirthDate = name, pid, birth
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            target = folder / f"{k:03d}.dcm"
            ds.save_as(target, enforce_file_format=True)
            files.append(target)
        series.append((study_uid, files))
    return series


def _logs(root: Path) -> dict[Path, str]:
    """Every log file under the node's folder: the process log and anything else it wrote as text."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and (path.suffix in {".log", ".txt", ".jsonl"} or path.name.endswith(".log.1")):
            found[path] = path.read_text(errors="replace")
    return found


def test_no_marker_of_the_patient_in_any_log(orthanc: Orthanc, nsclc_ct_files: list[Path], tmp_path: Path) -> None:
    series = _marker_series(nsclc_ct_files, tmp_path / "sent")
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    config = npx.write_config(node_dir, orthanc, outputs=("SEG", "RTSTRUCT", "SR", "PREVIEW"))
    node = npx.start(config, "serve")
    try:
        npx.wait_listening(node)
        for _study, files in series:
            npx.storescu(node.port, files)
        for study_uid, _files in series:
            npx.wait_for_outputs(orthanc, study_uid, node, timeout=300)
    finally:
        node.stop()

    # the delivered objects carry the markers: the values went all the way through the node
    for (study_uid, _files), (name, pid, _birth) in zip(series, MARKER_PATIENTS, strict=True):
        found = npx.outputs_in(orthanc, study_uid)
        rt = pydicom.dcmread(npx.fetch(orthanc, found["RTSTRUCT"][0], tmp_path / f"{pid}.dcm"))
        assert (str(rt.PatientName), rt.PatientID) == (name, pid)

    logs = _logs(node_dir)
    assert node.log_path in logs
    text = logs[node.log_path]
    # the log is the real thing: receive, job and delivery lines of both series are in it
    assert text.count("SEG") >= 2 and "job 1" in text and "job 2" in text, text[-3000:]
    # highdicom's person-name warning about the one-part name reached the log, in its safe form
    assert "single component" in text, "the one-part name made no warning: the test would prove nothing"
    leaks = [f"{path.name}: {line}" for path, content in logs.items()
             for line in content.splitlines() if FORBIDDEN.search(line)]
    assert not leaks, "patient data in the log:\n" + "\n".join(leaks[:20])
