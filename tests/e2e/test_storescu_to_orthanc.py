"""End to end: storescu sends the real NSCLC series to the node; Orthanc (the PACS) receives a
DICOM-SEG and an RTSTRUCT that dciodvfy accepts and that reproduce the node's label map."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from sqlalchemy import select

from dicom_node.db.tables import Delivery, DeliveryStatus, Job, JobStatus
from segmenter.core.metrics import dice
from tests.e2e import node_process as npx
from tests.peers import Orthanc, dciodvfy_errors

log = logging.getLogger(__name__)
pytestmark = pytest.mark.e2e


def test_series_in_seg_and_rtstruct_out(orthanc: Orthanc, nsclc_ct_files: list[Path], tmp_path: Path) -> None:
    config = npx.write_config(tmp_path, orthanc, outputs=("SEG", "RTSTRUCT", "SR", "PREVIEW"))
    node = npx.start(config, "serve")
    try:
        npx.wait_listening(node)
        last_sent = npx.storescu(node.port, nsclc_ct_files)
        study_uid = str(pydicom.dcmread(nsclc_ct_files[0], stop_before_pixels=True).StudyInstanceUID)
        found = npx.wait_for_outputs(orthanc, study_uid, node, timeout=300)
        latency = time.monotonic() - last_sent
        log.info("last slice sent -> SEG and RTSTRUCT in Orthanc: %.1f s", latency)
    finally:
        node.stop()
    assert len(found["SEG"]) == 1 and len(found["RTSTRUCT"]) == 1, found

    seg_path = npx.fetch(orthanc, found["SEG"][0], tmp_path / "seg.dcm")
    rt_path = npx.fetch(orthanc, found["RTSTRUCT"][0], tmp_path / "rtstruct.dcm")
    assert dciodvfy_errors(seg_path).errors == []
    assert dciodvfy_errors(rt_path).errors == []

    (job,) = npx.job_dir(config)
    labels_img = sitk.ReadImage(str(job / "labels.nii.gz"))
    labels = sitk.GetArrayFromImage(labels_img)
    structures = npx.read_structures(job)
    name_to_label = {name: int(label) for label, name in structures["labels"].items()}
    assert {"Lung_L", "Lung_R", "SpinalCord"} <= set(name_to_label)

    # SEG read back with highdicom equals the label map, segment by segment
    seg = hd.seg.segread(str(seg_path))
    ct_by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in nsclc_ct_files}
    volume = seg.get_volume(combine_segments=False)
    assert volume is not None
    seg_names = {int(n): seg.get_segment_description(n).segment_label for n in seg.segment_numbers}
    for number, name in seg_names.items():
        mask_img = _highdicom_mask(volume, number)
        expected = (labels == name_to_label[name]) if name in name_to_label else \
            (sitk.GetArrayFromImage(sitk.ReadImage(str(job / f"mask_{name}.nii.gz"))) > 0)
        got = npx.on_grid(mask_img, labels_img)
        assert np.array_equal(got, expected), f"SEG segment {name} differs from the label map"
    assert len(ct_by_uid) == 134

    # RTSTRUCT back to masks with plastimatch: Dice >= 0.95 for every structure > 10 cm3
    masks = npx.plastimatch_masks(rt_path, nsclc_ct_files[0].parent, tmp_path / "plastimatch")
    voxel_cm3 = float(np.prod(labels_img.GetSpacing())) / 1000.0
    for name, label in name_to_label.items():
        expected = labels == label
        if expected.sum() * voxel_cm3 <= 10:
            continue
        assert name in masks, f"plastimatch found no ROI {name}; got {sorted(masks)}"
        d = dice(npx.on_grid(masks[name], labels_img), expected)
        log.info("RTSTRUCT round trip Dice %s: %.4f", name, d)
        assert d >= 0.95, f"{name}: Dice {d:.4f}"

    with npx.index_of(config)() as s:
        job_row = s.scalars(select(Job)).one()
        assert job_row.status == JobStatus.DONE
        assert job_row.model_id == "builtin" and job_row.model_version
        deliveries = s.scalars(select(Delivery)).all()
        assert sorted(d.kind for d in deliveries) == ["PREVIEW", "RTSTRUCT", "SEG", "SR"]
        assert all(d.status == DeliveryStatus.SENT and d.attempts == 1 for d in deliveries)
    held = npx.sop_classes_in(orthanc, study_uid)
    assert "1.2.840.10008.5.1.4.1.1.88.34" in held  # Comprehensive 3D SR with the volumes
    assert any(c.startswith("1.2.840.10008.5.1.4.1.1.7") for c in held)  # the QA preview (Secondary Capture)


def _highdicom_mask(volume: hd.Volume, segment_number: int) -> sitk.Image:
    """One segment of a highdicom volume as a SimpleITK image with its geometry."""
    array = volume.array[..., segment_number - 1]  # (k, j, i) in the SEG's frame order
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    affine = volume.affine  # maps (k, j, i) voxel indices to LPS mm
    direction_kji = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    spacing_kji = np.linalg.norm(affine[:3, :3], axis=0)
    # SimpleITK's axes are (i, j, k): reverse the voxel axis order
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    image.SetSpacing(tuple(float(v) for v in spacing_kji[::-1]))
    image.SetDirection(tuple(float(v) for v in direction_kji[:, ::-1].flatten()))
    return image


def test_worker_killed_mid_job_finishes_after_restart_without_double_delivery(
        orthanc: Orthanc, nsclc_ct_files: list[Path], tmp_path: Path) -> None:
    # 60 contiguous slices: a complete series of its own, quicker than all 134
    by_number = sorted(nsclc_ct_files, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    files = by_number[30:90]
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    before = npx.outputs_in(orthanc, study_uid)
    # the rule's template renames a structure and keeps only three: what the worker applies
    config = npx.write_config(tmp_path, orthanc, template='include = ["Lung_L", "Lung_R", "SpinalCord"]\n'
                                                         'rename = { Lung_L = "Lung Left" }')
    listener = npx.start(config, "serve", "--no-worker", name="listener")
    worker = npx.start(config, "worker", "--worker-id", "w1", name="worker")
    try:
        npx.wait_listening(listener)
        npx.storescu(listener.port, files)
        factory = npx.index_of(config)
        deadline = time.monotonic() + 120
        stage = ""
        while time.monotonic() < deadline:
            with factory() as s:
                job = s.scalars(select(Job)).first()
                stage = job.stage if job else ""
            if stage in ("segment", "write"):
                break
            time.sleep(0.05)
        assert stage in ("segment", "write"), f"job never reached processing (stage {stage!r})"
        npx.kill(worker)  # a crash, not a polite stop
        with factory() as s:
            job = s.scalars(select(Job)).one()
            assert job.status == JobStatus.RUNNING
        worker = npx.start(config, "worker", "--worker-id", "w1", name="worker")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with factory() as s:
                job = s.scalars(select(Job)).one()
                if job.status in (JobStatus.DONE, JobStatus.FAILED):
                    break
            time.sleep(0.5)
        assert job.status == JobStatus.DONE, \
            f"{job.status}: {job.error_class} {job.error_message}\n{worker.log()[-3000:]}"
        assert job.attempts == 2
        with factory() as s:
            deliveries = s.scalars(select(Delivery)).all()
            assert sorted(d.kind for d in deliveries) == ["RTSTRUCT", "SEG"]
            assert all(d.status == DeliveryStatus.SENT and d.attempts == 1 for d in deliveries)
    finally:
        worker.stop(signal.SIGTERM)
        listener.stop()
    after = npx.outputs_in(orthanc, study_uid)
    new = {k: set(after[k]) - set(before[k]) for k in after}
    assert len(new["SEG"]) == 1 and len(new["RTSTRUCT"]) == 1, new
    rt = npx.dataset_from_bytes(orthanc.instance_file(new["RTSTRUCT"].pop()))
    assert sorted(r.ROIName for r in rt.StructureSetROISequence) == ["Lung Left", "Lung_R", "SpinalCord"]
    assert all("template site" in r.ROIDescription for r in rt.StructureSetROISequence)


def test_send_a_job_folder_by_hand_skips_what_is_not_dicom(orthanc: Orthanc, tmp_path: Path) -> None:
    """`dicom-node send` of a job folder (objects beside labels.nii.gz and structures.json)."""
    import subprocess
    import sys

    config = npx.write_config(tmp_path, orthanc)
    folder = tmp_path / "job-000001"
    folder.mkdir()
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.PatientID = "SENDTEST"
    ds.Modality = "OT"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(folder / "object.dcm", enforce_file_format=True)
    (folder / "structures.json").write_text("{}")
    (folder / "labels.nii.gz").write_bytes(b"\x1f\x8b not really")
    proc = subprocess.run([sys.executable, "-m", "dicom_node.cli", "send", str(folder), "PACS",
                           "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 sent, 0 failed" in proc.stdout
    assert "skipping structures.json: not a DICOM file" in proc.stderr
