"""RT Structure Set writer (pydicom): one ROI per non-empty structure, CLOSED_PLANAR contours.

Modules written (PS3.3 A.19): Patient, General Study, Patient Study (copied from the CT), RT Series,
Frame of Reference, General Equipment, Structure Set, ROI Contour, RT ROI Observations, Approval
(:mod:`dicom_node.outputs.rtstruct.approval`: UNAPPROVED, or APPROVED by a reviewer), SOP Common.
Every Type 1 attribute is filled and every Type 2 attribute is present (empty when unknown), which
is what dciodvfy and planning systems check (see the field notes: rt-utils missed five).

Contours come from :mod:`dicom_node.outputs.rtstruct.contours`: pixel boundaries traced per slice, outer
boundaries and holes as separate contours (even-odd filling reproduces the mask), placed on the
image plane of the slice with the slice's own ImagePositionPatient and the volume's orientation, and
each referencing its image in ContourImageSequence. Each ROI's ContourSequence is encoded to bytes
directly (:mod:`dicom_node.outputs.rtstruct.encoding`) and kept as a raw element: pydicom writes it
as it is, and parses it only if someone reads it from the returned dataset.
"""

from __future__ import annotations

import logging

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import RTStructureSetStorage

from dicom_node.errors import OutputError
from dicom_node.outputs.common import (
    StructureMask,
    check_grid,
    check_structures,
    copy_patient_study,
    dicom_now,
    frame_number,
    new_uid,
    roi_description,
    series_description,
    set_equipment,
    slice_planes,
)
from dicom_node.outputs.rtstruct.approval import Approval, set_approval
from dicom_node.outputs.rtstruct.contours import (
    ContourOptions,
)
from dicom_node.outputs.rtstruct.encoding import (
    image_reference,
)
from dicom_node.outputs.rtstruct.parallel import encoded_structures
from dicom_node.outputs.rtstruct.roi_contours import PlaneArrays
from dicom_node.series_io import CtSeries
from dicom_node.settings import IdentitySettings
from dicom_node.templates import OutputNaming
from segmenter.core.result import SegmentationResult

log = logging.getLogger(__name__)

# Retired Detached Study Management SOP Class: what RTReferencedStudySequence conventionally names
# (PS3.3 C.8.8.5); planning systems look for it.
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
STRUCTURE_SET_LABEL = "AI contours"  # SH, 16 characters at most
CONTOUR_SEQUENCE_TAG = 0x30060040


def build_rtstruct(series: CtSeries, result: SegmentationResult, identity: IdentitySettings,
                   options: ContourOptions | None = None, naming: OutputNaming | None = None,
                   workers: int | None = 1, approval: Approval | None = None) -> Dataset:
    """An RT Structure Set of ``result`` on ``series``; valid when returned, or OutputError.

    ``naming`` (from a template) gives site ROI names and the template name for ROI Description.
    ``workers`` processes trace the structures (default 1, in-process: forking a threaded worker
    process risks deadlocks; ``None`` = one per available CPU). ``approval``: the reviewer who approved
    the contours (APPROVED); None writes UNAPPROVED.
    """
    options = options or ContourOptions()
    naming = naming or OutputNaming()
    check_grid(series, result)
    boxes = check_structures(result, naming.catalogue)
    planes = PlaneArrays.of(slice_planes(series))
    first = series.datasets[0]

    ds = Dataset()
    date, time = dicom_now()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = new_uid(identity.uid_root)
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    copy_patient_study(first, ds)
    if str(ds.StudyInstanceUID) != series.study_uid:
        raise OutputError(f"StudyInstanceUID {ds.StudyInstanceUID} of the first image differs from CtSeries.study_uid")
    # RT Series
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = new_uid(identity.uid_root)
    ds.SeriesNumber = identity.rtstruct_series_number
    ds.SeriesDescription = series_description(identity, "contours", result)
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.OperatorsName = ""
    # Frame of Reference
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "") or ""
    set_equipment(ds, identity)
    # Structure Set
    ds.StructureSetLabel = STRUCTURE_SET_LABEL
    ds.StructureSetName = f"{result.model_id}"[:64]
    ds.StructureSetDescription = series_description(identity, "contours", result)
    ds.InstanceNumber = 1
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.ReferencedFrameOfReferenceSequence = _referenced_frame_of_reference(series)

    references = [image_reference(str(image.SOPClassUID), str(image.SOPInstanceUID), frame_number(series, k))
                  for k, image in enumerate(series.datasets)]
    rois, contours, observations = Sequence(), Sequence(), Sequence()
    for structure, (encoded, count) in encoded_structures(result, boxes, planes, options, references, workers,
                                                                  naming.catalogue):
        if count == 0:
            log.info("structure %s: no contour left after the island threshold: omitted", structure.name)
            continue
        number = len(rois) + 1
        rois.append(_structure_set_roi(number, structure, series, result, naming))
        contours.append(_roi_contour(number, structure, encoded))
        observations.append(_observation(number, structure, naming))
        log.debug("structure %s: ROI %d, %d contours", structure.name, number, count)
    if not rois:
        raise OutputError("StructureSetROISequence: no non-empty structure to write (Type 1, needs an item)")
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    set_approval(ds, approval)
    _keep_raw_contours(ds)
    return ds


def _image_reference(image: Dataset, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = image.SOPClassUID
    item.ReferencedSOPInstanceUID = image.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return item


def _referenced_frame_of_reference(series: CtSeries) -> Sequence:
    series_item = Dataset()
    series_item.SeriesInstanceUID = series.series_uid
    series_item.ContourImageSequence = Sequence([_image_reference(image, frame_number(series, k))
                                                 for k, image in enumerate(series.datasets)])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    study_item.ReferencedSOPInstanceUID = series.study_uid
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference_uid
    frame.RTReferencedStudySequence = Sequence([study_item])
    return Sequence([frame])


def _structure_set_roi(number: int, structure: StructureMask, series: CtSeries,
                       result: SegmentationResult, naming: OutputNaming) -> Dataset:
    item = Dataset()
    item.ROINumber = number
    item.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
    item.ROIName = naming.display(structure.name)
    item.ROIDescription = roi_description(structure.info, result, naming.template_name)
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = f"{result.model_id} {result.model_version}"[:64]
    return item


def _roi_contour(number: int, structure: StructureMask, encoded: bytes) -> Dataset:
    item = Dataset()
    item.ROIDisplayColor = list(structure.info.colour)
    item[CONTOUR_SEQUENCE_TAG] = RawDataElement(BaseTag(CONTOUR_SEQUENCE_TAG), "SQ", len(encoded), encoded, 0,
                                                False, True)
    item.ReferencedROINumber = number
    return item


def _observation(number: int, structure: StructureMask, naming: OutputNaming) -> Dataset:
    item = Dataset()
    item.ObservationNumber = number
    item.ReferencedROINumber = number
    item.ROIObservationLabel = naming.display(structure.name)[:16]
    item.RTROIInterpretedType = structure.info.rt_type
    item.ROIInterpreter = ""
    return item


def _keep_raw_contours(ds: Dataset) -> None:
    """Mark the structure set and its ROI contour items as already encoded the way the file is written
    (explicit VR little endian, the structure set's character set), so pydicom writes the raw
    ContourSequence bytes as they are instead of parsing them back into datasets first (its
    ambiguous-VR pass would otherwise walk into every sequence). Nothing in an RTSTRUCT has an
    ambiguous VR."""
    for roi in ds.ROIContourSequence:
        roi.set_original_encoding(False, True, roi._character_set)
    ds.set_original_encoding(False, True, ds._character_set)
