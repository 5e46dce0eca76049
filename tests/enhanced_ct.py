"""Build an Enhanced CT (multi-frame) instance from single-frame CT slices, for tests only.

The frames are written in a shuffled order on purpose, so that writers must follow the frame
numbers rather than assume frame k is slice k.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
           "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
           "SeriesInstanceUID", "SeriesNumber", "Modality", "FrameOfReferenceUID", "PositionReferenceIndicator",
           "Manufacturer", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
           "PatientPosition", "BodyPartExamined", "PatientIdentityRemoved", "DeidentificationMethod")


def enhanced_from_slices(paths: Sequence[Path], seed: int = 7) -> Dataset:
    """One Enhanced CT holding every slice of ``paths`` as a frame, in shuffled frame order."""
    slices = [pydicom.dcmread(p) for p in paths]
    order = list(range(len(slices)))
    random.Random(seed).shuffle(order)
    first = slices[0]
    ds = Dataset()
    for keyword in _COPIED:
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)
    ds.SOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = first.get("StudyDate", "20200101"), "120000"
    ds.AcquisitionDateTime = f"{ds.ContentDate}120000"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.NumberOfFrames = len(slices)
    ds.ContentQualification, ds.BurnedInAnnotation, ds.LossyImageCompression = "PRODUCT", "NO", "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.DimensionOrganizationType = "3D"

    orientation, measures, transform = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = list(first.ImageOrientationPatient)
    measures.PixelSpacing = list(first.PixelSpacing)
    measures.SliceThickness = first.get("SliceThickness", 1.0)
    transform.RescaleSlope = first.get("RescaleSlope", 1)
    transform.RescaleIntercept = first.get("RescaleIntercept", 0)
    transform.RescaleType = "HU"
    shared = Dataset()
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    frames = []
    for index in order:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = list(slices[index].ImagePositionPatient)
        item.PlanePositionSequence = DicomSequence([plane])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    pixels = np.stack([slices[index].pixel_array for index in order])
    ds.PixelData = pixels.astype(first.pixel_array.dtype).tobytes()

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
