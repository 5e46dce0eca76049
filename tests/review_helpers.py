"""A job held for review on a synthetic CT of many slices, made in a real index with real files.

The CT (a body with two lungs and a spine, 512 x 512 pixels of 0.8 mm, 1 mm slices) is written as DICOM
files and indexed with the node's own functions (record_instance, mark_series, enqueue, claim); its
label map is kept with the pipeline's :func:`keep_label_map` and the job held with the review's
:func:`hold`, as the worker does after a segmentation. No engine runs: a 300-slice segmentation would
take minutes on a small machine, and the viewer only reads what the worker leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import index, jobs, review
from dicom_node.db.index import InstanceMeta
from dicom_node.db.tables import Series, SeriesState
from dicom_node.pipeline import keep_label_map
from dicom_node.review.held import keep_for_review
from dicom_node.routing import RoutedAction
from dicom_node.settings import Settings
from segmenter.core.result import LabelledStructure, SegmentationResult
from segmenter.core.volume import Volume

SPACING = (0.8, 0.8, 1.0)  # x, y, z in mm
STRUCTURES = {1: "Lung_L", 2: "Lung_R", 3: "SpinalCord"}  # and External as an extra mask
PATIENT_ID = "REVIEW-0042"


@dataclass(frozen=True)
class HeldCt:
    job_id: int
    series_id: int
    slices: int


def _phantom_slice(k: int, slices: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU, labels and the body mask of slice k (lungs in the middle 70 % of the slices)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    body = (x / 0.42) ** 2 + (y / 0.3) ** 2 <= 1
    hu = np.full((size, size), -1000, dtype=np.int16)
    hu[body] = 40
    labels = np.zeros((size, size), dtype=np.uint8)
    t = k / max(1, slices - 1)
    if 0.15 <= t <= 0.85:
        radius = 0.12 * np.sin((t - 0.15) / 0.7 * np.pi) ** 0.5 + 0.02
        for label, cx in ((1, 0.17), (2, -0.17)):  # patient left is +x: the image's right
            lung = ((x - cx) / radius) ** 2 + ((y + 0.02) / (radius * 1.3)) ** 2 <= 1
            hu[lung] = -800
            labels[lung] = label
    spine = x**2 + (y - 0.2) ** 2 <= 0.05**2
    hu[spine] = 700
    cord = x**2 + (y - 0.2) ** 2 <= 0.018**2
    hu[cord] = 30
    labels[cord] = 3
    hu += (np.sin(x * 90 + k) * np.cos(y * 70) * 25).astype(np.int16)  # some texture
    return hu, labels, body


def _dataset(hu: np.ndarray, k: int, uids: tuple[str, str, str]) -> Dataset:
    study, series, frame = uids
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Review^Phantom", PATIENT_ID, "", "O"
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = (
        "20260101", "120000", "", "1", "")
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = "CT", 2, k + 1, "Thorax 1mm"
    ds.PatientPosition, ds.PositionReferenceIndicator, ds.Manufacturer = "HFS", "", "Synthetic"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-204.8, -204.8, -150.0 + SPACING[2] * k]
    ds.PixelSpacing = [SPACING[1], SPACING[0]]
    ds.SliceThickness = SPACING[2]
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.PixelData = hu.tobytes()
    return ds


def held_ct_job(settings: Settings, factory: sessionmaker[Session], slices: int = 300, size: int = 512) -> HeldCt:
    """A CT of ``slices`` slices stored and indexed, its job segmented (label map kept) and held for review."""
    uids = (generate_uid(), generate_uid(), generate_uid())
    folder = settings.node.storage_dir / uids[0] / uids[1]
    folder.mkdir(parents=True)
    labels = np.zeros((slices, size, size), dtype=np.uint8)
    external = np.zeros(labels.shape, dtype=bool)
    for k in range(slices):
        hu, labels[k], external[k] = _phantom_slice(k, slices, size)
        ds = _dataset(hu, k, uids)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        meta = InstanceMeta(sop_uid=ds.SOPInstanceUID, sop_class_uid=CTImageStorage,
                            transfer_syntax_uid=ExplicitVRLittleEndian, study_uid=uids[0], series_uid=uids[1],
                            patient_key=PATIENT_ID, modality="CT", series_description="Thorax 1mm",
                            study_date="20260101", instance_number=k + 1, slice_position=float(k))
        assert index.record_instance(factory, meta, str(path), path.stat().st_size, None)
    action = RoutedAction(rule_name="thorax-review", model_id="builtin", outputs=("SEG", "RTSTRUCT"),
                          seg_type="BINARY", review="required")
    with factory.begin() as session:
        series_id = session.scalars(select(Series.id).where(Series.series_uid == uids[1])).one()
        index.mark_series(session, series_id, SeriesState.DISPATCHED, "test", slices)
        job = jobs.enqueue(session, series_id, uids[1], action, slices)
        assert job is not None
        session.flush()
        job_id = job.id
    assert jobs.claim(factory, "test-worker") == job_id
    grid = Volume(labels, SPACING, (-204.8, -204.8, -150.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    result = SegmentationResult(grid, tuple(LabelledStructure(n, s) for n, s in STRUCTURES.items()), "builtin",
                                "test", {"External": external})
    out_dir = settings.worker.output_dir / f"job-{job_id:06d}"
    keep_label_map(result, out_dir)
    keep_for_review(out_dir, [])  # the structure volumes the queue lists (no objects: nothing to approve)
    assert review.hold(factory, job_id)
    return HeldCt(job_id, series_id, slices)
