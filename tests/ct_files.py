"""One synthetic, uncompressed CT slice as a DICOM file: the header every generated series shares.

Used by the generated TotalSegmentator-shaped test series and the writer benchmarks' series; nothing
here comes from patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass(frozen=True)
class SeriesUids:
    study: str
    series: str
    frame: str

    @classmethod
    def new(cls) -> SeriesUids:
        return cls(generate_uid(), generate_uid(), generate_uid())


def write_ct_slice(path: Path, uids: SeriesUids, k: int, position: tuple[float, float, float], pixel: float,
                   step: float, stored: np.ndarray, patient: tuple[str, str]) -> None:
    """Slice ``k`` (InstanceNumber k + 1), HFS, axial, 16-bit signed ``stored`` values with rescale -1024."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids.study, uids.series, uids.frame
    ds.PatientName, ds.PatientID = patient
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = (
        "20250101", "120000", "", "1", "")
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
    ds.PatientPosition, ds.PositionReferenceIndicator, ds.Manufacturer = "HFS", "", "Synthetic"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = list(position)
    ds.SliceLocation = position[2]
    ds.PixelSpacing = [pixel, pixel]
    ds.SliceThickness = step
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.KVP = 120
    ds.PixelData = stored.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
