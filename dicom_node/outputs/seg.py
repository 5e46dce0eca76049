"""DICOM-SEG writer (highdicom): a BINARY Segmentation, one segment per non-empty structure.

Frames exist only where a segment is present (highdicom's ``omit_empty_frames``). The frame geometry
is never assumed: frame ``k`` of the pixel array is the source image ``series.datasets[k]`` and
highdicom takes each frame's position and orientation from that image, so feet-first, prone or
flipped series keep their orientation (the mirroring bug of the field notes cannot happen here).

Memory: a label map without extra masks is passed in highdicom's label-map style (one byte or two a
voxel, segments renumbered 1..N); containing structures (``extra_masks``, e.g. External) overlap the
label map, so then the stacked-segments style (one boolean plane a segment) is used.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.errors import OutputError
from dicom_node.outputs.common import (
    StructureMask,
    check_grid,
    check_structures,
    complete_deidentification,
    iter_structures,
    new_uid,
    roi_description,
    series_description,
    slice_planes,
)
from dicom_node.series_io import CtSeries
from dicom_node.settings import IdentitySettings
from dicom_node.templates import OutputNaming
from segmenter.catalogue import Code as CatalogueCode
from segmenter.result import SegmentationResult

log = logging.getLogger(__name__)

CONTENT_LABEL = "AI_CONTOURS"  # CS, 16 characters at most


def build_seg(series: CtSeries, result: SegmentationResult, identity: IdentitySettings,
              naming: OutputNaming | None = None) -> Dataset:
    """A BINARY DICOM Segmentation of ``result`` on ``series``; valid when returned, or OutputError.

    ``naming`` (from a template) gives site segment labels and the template name for the description.
    """
    naming = naming or OutputNaming()
    check_grid(series, result)
    check_structures(result)
    slice_planes(series)  # headers must agree with the volume the label map lies on
    structures = list(iter_structures(result))
    if not structures:
        raise OutputError("SegmentSequence: no non-empty structure to write (Type 1, needs an item)")
    descriptions = [_segment_description(number, s, result, identity, naming)
                    for number, s in enumerate(structures, start=1)]
    pixels = _pixel_array(series, result, structures)
    try:
        seg = hd.seg.Segmentation(
            source_images=list(series.datasets),
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=new_uid(identity.uid_root),
            series_number=identity.seg_series_number,
            sop_instance_uid=new_uid(identity.uid_root),
            instance_number=1,
            manufacturer=identity.manufacturer,
            manufacturer_model_name=identity.manufacturer_model_name,
            software_versions=identity.software_version,
            device_serial_number=identity.device_serial_number,
            content_description=f"{identity.series_description_prefix} segmentation"[:64],
            content_label=CONTENT_LABEL,
            omit_empty_frames=True,
            series_description=series_description(identity, "segmentation", result),
            institution_name=identity.institution_name or None,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputError(f"highdicom refused the segmentation: {exc}") from exc
    complete_deidentification(seg)
    log.info("SEG: %d segments, %d frames", len(descriptions), int(seg.NumberOfFrames))
    return seg


def _code(code: CatalogueCode) -> Code:
    return Code(code.value, code.scheme, code.meaning)


def _segment_description(number: int, structure: StructureMask, result: SegmentationResult,
                         identity: IdentitySettings, naming: OutputNaming) -> hd.seg.SegmentDescription:
    info = structure.info
    try:
        algorithm = hd.AlgorithmIdentificationSequence(
            name=result.model_id, family=codes.cid7162.ArtificialIntelligence, version=result.model_version)
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=naming.display(structure.name),
            segmented_property_category=_code(info.category),
            segmented_property_type=_code(info.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=new_uid(identity.uid_root),
            tracking_id=structure.name,
            display_color=hd.color.CIELabColor.from_rgb(*info.colour),
        )
        description.SegmentDescription = roi_description(info, result, naming.template_name)
        if info.modifier is not None:  # laterality etc. refines the type (PS3.3 C.8.20.2 Segment Description)
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(info.modifier.value, info.modifier.scheme, info.modifier.meaning)]
        return description
    except (ValueError, TypeError) as exc:
        raise OutputError(f"segment {number} ({structure.name}): {exc}") from exc


def _pixel_array(series: CtSeries, result: SegmentationResult, structures: list[StructureMask]) -> np.ndarray:
    """Label-map style (segments renumbered) when nothing overlaps, stacked booleans otherwise."""
    shape = series.volume.shape
    if not result.extra_masks:
        lut_dtype = np.uint8 if len(structures) < 256 else np.uint16
        labels = result.labels.array
        lut = np.zeros(int(labels.max()) + 1, dtype=lut_dtype)
        by_name = {s.name: s.label for s in result.structures}
        for number, structure in enumerate(structures, start=1):
            lut[by_name[structure.name]] = number
        return lut[labels]
    stacked = np.zeros((*shape, len(structures)), dtype=bool)
    for number, structure in enumerate(structures):
        k, j, i = structure.box
        stacked[k, j, i, number] = structure.mask
    return stacked
