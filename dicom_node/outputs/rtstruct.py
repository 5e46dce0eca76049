"""RT Structure Set writer (pydicom): one ROI per non-empty structure, CLOSED_PLANAR contours.

Modules written (PS3.3 A.19): Patient, General Study, Patient Study (copied from the CT), RT Series,
Frame of Reference, General Equipment, Structure Set, ROI Contour, RT ROI Observations, SOP Common.
Every Type 1 attribute is filled and every Type 2 attribute is present (empty when unknown), which
is what dciodvfy and planning systems check (see the field notes: rt-utils missed five).

Contours come from :mod:`dicom_node.outputs.contours`: pixel boundaries traced per slice, outer
boundaries and holes as separate contours (even-odd filling reproduces the mask), placed on the
image plane of the slice with the slice's own ImagePositionPatient and the volume's orientation, and
each referencing its image in ContourImageSequence.
"""

from __future__ import annotations

import logging

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RTStructureSetStorage

from dicom_node.errors import OutputError
from dicom_node.outputs.common import (
    StructureMask,
    check_grid,
    check_structures,
    copy_patient_study,
    dicom_now,
    format_ds,
    iter_structures,
    new_uid,
    roi_description,
    series_description,
    set_equipment,
    slice_planes,
)
from dicom_node.outputs.contours import ContourOptions, SlicePlane, slice_contours
from dicom_node.outputs.parallel import traced_structures
from dicom_node.series_io import CtSeries
from dicom_node.settings import IdentitySettings
from dicom_node.templates import OutputNaming
from segmenter.result import SegmentationResult

log = logging.getLogger(__name__)

# Retired Detached Study Management SOP Class: what RTReferencedStudySequence conventionally names
# (PS3.3 C.8.8.5); planning systems look for it.
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
STRUCTURE_SET_LABEL = "AI contours"  # SH, 16 characters at most
# An explicit-VR DS element holds at most 0xFFFE bytes; a longer ContourData would turn into UN.
MAX_VALUE_BYTES = 0xFFFE
_DECIMALS = (4, 2, 1)
CONTOUR_DATA_TAG = 0x30060050


def build_rtstruct(series: CtSeries, result: SegmentationResult, identity: IdentitySettings,
                   options: ContourOptions | None = None, naming: OutputNaming | None = None,
                   workers: int | None = 1) -> Dataset:
    """An RT Structure Set of ``result`` on ``series``; valid when returned, or OutputError.

    ``naming`` (from a template) gives site ROI names and the template name for ROI Description.
    ``workers`` processes trace the structures (default 1, in-process: forking a threaded worker
    process risks deadlocks and measured no gain on 2 cores; ``None`` = one per available CPU).
    """
    options = options or ContourOptions()
    naming = naming or OutputNaming()
    check_grid(series, result)
    check_structures(result)
    planes = slice_planes(series)
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

    rois, contours, observations = Sequence(), Sequence(), Sequence()
    for structure, polygons in traced_structures(result, planes, options, workers):
        contour_items = _contour_items(structure, polygons, series)
        if not contour_items:
            log.info("structure %s: no contour left after the island threshold: omitted", structure.name)
            continue
        number = len(rois) + 1
        rois.append(_structure_set_roi(number, structure, series, result, naming))
        contours.append(_roi_contour(number, structure, contour_items))
        observations.append(_observation(number, structure, naming))
        log.debug("structure %s: ROI %d, %d contours", structure.name, number, len(contour_items))
    if not rois:
        raise OutputError("StructureSetROISequence: no non-empty structure to write (Type 1, needs an item)")
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    _keep_raw_contour_data(ds)
    ds.RTROIObservationsSequence = observations
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def _image_reference(image: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = image.SOPClassUID
    item.ReferencedSOPInstanceUID = image.SOPInstanceUID
    return item


def _referenced_frame_of_reference(series: CtSeries) -> Sequence:
    series_item = Dataset()
    series_item.SeriesInstanceUID = series.series_uid
    series_item.ContourImageSequence = Sequence([_image_reference(image) for image in series.datasets])
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


def _roi_contour(number: int, structure: StructureMask, contour_items: list[Dataset]) -> Dataset:
    item = Dataset()
    item.ROIDisplayColor = list(structure.info.colour)
    item.ReferencedROINumber = number
    item.ContourSequence = Sequence(contour_items)
    return item


def _observation(number: int, structure: StructureMask, naming: OutputNaming) -> Dataset:
    item = Dataset()
    item.ObservationNumber = number
    item.ReferencedROINumber = number
    item.ROIObservationLabel = naming.display(structure.name)[:16]
    item.RTROIInterpretedType = structure.info.rt_type
    item.ROIInterpreter = ""
    return item


def structure_polygons(structure: StructureMask, planes: list[SlicePlane],
                       options: ContourOptions) -> list[tuple[int, np.ndarray]]:
    """(slice index, (N, 3) patient points) of every traced polygon, only on slices where the structure is."""
    k_box, j_box, i_box = structure.box
    offset = np.array([j_box.start, i_box.start], dtype=np.float64)
    present = np.flatnonzero(structure.mask.any(axis=(1, 2)))
    out: list[tuple[int, np.ndarray]] = []
    for local_k in present:
        k = k_box.start + int(local_k)
        plane = planes[k]
        for polygon in slice_contours(structure.mask[local_k], plane.spacing_rc, options):
            out.append((k, plane.to_patient(polygon + offset)))
    return out


def _contour_items(structure: StructureMask, polygons: list[tuple[int, np.ndarray]],
                   series: CtSeries) -> list[Dataset]:
    """One CLOSED_PLANAR item per polygon, each referencing its image."""
    items: list[Dataset] = []
    for k, points in polygons:
        item = Dataset()
        item.ContourImageSequence = Sequence([_image_reference(series.datasets[k])])
        item.ContourGeometricType = "CLOSED_PLANAR"
        item.NumberOfContourPoints = len(points)
        item.ContourNumber = len(items) + 1
        item[CONTOUR_DATA_TAG] = _raw_ds(CONTOUR_DATA_TAG, contour_data(points))
        items.append(item)
    return items


def _keep_raw_contour_data(ds: Dataset) -> None:
    """Mark contour items as already encoded the way the file is written (explicit VR little endian,
    the structure set's character set), so pydicom writes the raw ContourData bytes as they are
    instead of parsing every number back into a DSfloat first."""
    for roi in ds.ROIContourSequence:
        for item in roi.ContourSequence:
            item.set_original_encoding(False, True, item._character_set)


def _raw_ds(tag: int, values: list[str]) -> RawDataElement:
    """A DS element kept as its encoded bytes: the strings are valid DS by construction
    (:func:`contour_data`), and pydicom's per-value DSfloat conversion would cost more than the tracing."""
    value = "\\".join(values).encode("ascii")
    if len(value) % 2:
        value += b" "
    return RawDataElement(BaseTag(tag), "DS", len(value), value, 0, False, True)


def _strip(text: str) -> str:
    text = text.rstrip("0").rstrip(".") if "." in text else text
    return "0" if text in ("-0", "") else text


def contour_data(points: np.ndarray) -> list[str]:
    """ContourData values (x1, y1, z1, x2, ...) as DS strings of at most 16 characters.

    Four decimals unless the element would exceed the 64 KiB explicit-VR value limit, then fewer.
    """
    flat = np.asarray(points, dtype=np.float64).ravel()
    # Fast path for ordinary patient coordinates: fixed point always fits 16 characters below 1e9.
    ordinary = bool(np.all(np.isfinite(flat)) and np.all(np.abs(flat) < 1e9))
    for decimals in _DECIMALS:
        if ordinary:
            values = [_strip(f"{v:.{decimals}f}") for v in flat.tolist()]
        else:
            values = [format_ds(v, decimals) for v in flat]
        if sum(len(v) for v in values) + len(values) - 1 <= MAX_VALUE_BYTES:
            return values
    raise OutputError(f"ContourData: a contour of {len(flat) // 3} points does not fit the 64 KiB DS value "
                      f"limit even with {_DECIMALS[-1]} decimal")
