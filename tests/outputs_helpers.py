"""Test helpers for the output writers: CtSeries made in memory, identities, voxel <-> patient coordinates.

Real series are read with ``dicom_node.series_io.load_series``; ``synthetic_series`` follows its
convention: origin = slice 0's ImagePositionPatient, spacing = (column spacing, row spacing, slice
step), direction columns = [row cosine, column cosine, normal].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from dicom_node.series_io import CtSeries
from dicom_node.settings import IdentitySettings
from segmenter.core.volume import Volume

TEST_ROOT = "1.2.826.0.1.3680043.8.498"

# ImageOrientationPatient (row cosine, column cosine) of the usual patient positions.
ORIENTATIONS: dict[str, tuple[float, ...]] = {
    "HFS": (1, 0, 0, 0, 1, 0),
    "FFS": (-1, 0, 0, 0, 1, 0),
    "HFP": (-1, 0, 0, 0, -1, 0),
    "FFP": (1, 0, 0, 0, -1, 0),
    # oblique, column cosine negative in y and a tilt in z: nothing axis-aligned to lean on
    "OBLIQUE": (0.9659258, 0.0, 0.2588190, 0.0, -1.0, 0.0),
}


def identity(**changes: object) -> IdentitySettings:
    values: dict[str, object] = dict(
        uid_root=TEST_ROOT, manufacturer="Test Physics", manufacturer_model_name="dicom-autocontour-node",
        software_version="0.1.0", device_serial_number="TEST-1", institution_name="Test Hospital",
        seg_series_number=9901, rtstruct_series_number=9902, series_description_prefix="AI-generated")
    values.update(changes)
    return IdentitySettings(**values)  # type: ignore[arg-type]


def direction_from_iop(iop: tuple[float, ...]) -> tuple[float, ...]:
    row = np.asarray(iop[:3], dtype=float)
    col = np.asarray(iop[3:], dtype=float)
    normal = np.cross(row, col)
    return tuple(float(v) for v in np.stack([row, col, normal], axis=1).ravel())


def synthetic_series(hu: np.ndarray, position: str = "FFS", spacing: tuple[float, float, float] = (0.8, 1.1, 2.5),
                     origin: tuple[float, float, float] = (-20.0, 35.0, 100.0)) -> tuple[CtSeries, list[Dataset]]:
    """A small CT series made in memory. ``hu[k]`` is the pixel array of slice k (rows, columns).

    Returns the CtSeries (headers only) and the full datasets with pixel data (to write to disk).
    """
    iop = ORIENTATIONS[position]
    direction = direction_from_iop(iop)
    d = np.asarray(direction).reshape(3, 3)
    study, series_uid, frame = generate_uid(), generate_uid(), generate_uid()
    full = []
    for k in range(hu.shape[0]):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series_uid, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "PH-1", "", "O"
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = (
            "20250101", "120000", "", "1", "")
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
        ds.PatientPosition = position if position != "OBLIQUE" else "HFS"
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "Synthetic"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = list(iop)
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + d[:, 2] * spacing[2] * k]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.KVP = 120
        ds.PixelData = np.ascontiguousarray(hu[k].astype(np.int16)).tobytes()
        full.append(ds)
    volume = Volume(hu.astype(np.int16), spacing, origin, direction)
    headers = []
    for ds in full:
        # a new dataset: pydicom's Dataset.copy() shares the element dict, so deleting PixelData from
        # a copy would delete it from the full dataset too
        header = Dataset()
        for element in ds:
            if element.keyword != "PixelData":
                header.add(element)
        headers.append(header)
    return CtSeries(volume, tuple(headers), study, series_uid, frame), full


def write_series(folder: Path, datasets: list[pydicom.Dataset]) -> None:
    """``datasets`` (from :func:`synthetic_series`) as Part 10 files in a new ``folder``, in order."""
    folder.mkdir()
    for n, ds in enumerate(datasets):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"ct_{n:03d}.dcm", enforce_file_format=True)


def voxel_to_patient(volume: Volume, kji: np.ndarray) -> np.ndarray:
    """(N, 3) continuous (k, j, i) indices -> (N, 3) patient coordinates, from the volume geometry."""
    d = np.asarray(volume.direction).reshape(3, 3)
    ijk = np.asarray(kji, dtype=float)[:, ::-1] * np.asarray(volume.spacing)
    return np.asarray(volume.origin) + ijk @ d.T


def patient_to_voxel(volume: Volume, xyz: np.ndarray) -> np.ndarray:
    """(N, 3) patient coordinates -> (N, 3) continuous (k, j, i) indices (inverse of the above)."""
    d = np.asarray(volume.direction).reshape(3, 3)
    ijk = np.linalg.solve(d * np.asarray(volume.spacing), (np.asarray(xyz) - np.asarray(volume.origin)).T).T
    return ijk[:, ::-1]
