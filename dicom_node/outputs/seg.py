"""DICOM-SEG writer (highdicom): BINARY (default), LABELMAP or FRACTIONAL, one segment per non-empty structure.

Frames exist only where a segment is present (highdicom's ``omit_empty_frames``). The frame geometry
is never assumed: frame ``k`` of the pixel array is the source image ``series.datasets[k]`` and
highdicom takes each frame's position and orientation from that image, so feet-first, prone or
flipped series keep their orientation (the mirroring bug of the field notes cannot happen here).

Memory: a label map without extra masks is passed in highdicom's label-map style (one byte or two a
voxel, segments renumbered 1..N); containing structures (``extra_masks``, e.g. External) overlap the
label map, so then the stacked-segments style (one boolean plane a segment) is used.

Speed: BINARY SEGs of label-map structures (frames of whole bytes) go through
:mod:`dicom_node.outputs.seg_binary`, which lets highdicom build the object once per plane and
replicates the frames and packs the bits itself (same bytes as highdicom, several times faster, the
Pixel Data kept out of memory).
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
from dicom_node.outputs.seg_binary import build_binary
from dicom_node.series_io import CtSeries
from dicom_node.settings import SEG_TYPES, IdentitySettings
from dicom_node.templates import OutputNaming
from segmenter.core.catalogue import Code as CatalogueCode
from segmenter.core.result import SegmentationResult

log = logging.getLogger(__name__)

CONTENT_LABEL = "AI_CONTOURS"  # CS, 16 characters at most
# SEG_TYPES: BINARY, one bit a pixel; LABELMAP, Label Map Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.7),
# one segment number a pixel; FRACTIONAL, one byte a pixel and segment (0 or 255 here).


def build_seg(series: CtSeries, result: SegmentationResult, identity: IdentitySettings,
              naming: OutputNaming | None = None, seg_type: str = "BINARY") -> Dataset:
    """One DICOM Segmentation of ``result`` on ``series``; valid when returned, or OutputError.

    ``naming`` (from a template) gives site segment labels and the template name for the description.
    A LABELMAP of a result with overlapping extra masks needs several instances: use
    :func:`build_seg_instances`.
    """
    instances = build_seg_instances(series, result, identity, naming, seg_type)
    if len(instances) != 1:
        raise OutputError(f"SEG {seg_type}: the structures need {len(instances)} instances (overlapping "
                          "extra masks cannot share one LABELMAP); use build_seg_instances")
    return instances[0]


def build_seg_instances(series: CtSeries, result: SegmentationResult, identity: IdentitySettings,
                        naming: OutputNaming | None = None, seg_type: str = "BINARY",
                        max_segments: int = 0) -> list[Dataset]:
    """The SEG instances of ``result``, one series: one instance per structure group.

    Groups: everything in one instance for BINARY and FRACTIONAL; for LABELMAP (whose segments
    must not overlap) the label-map structures, then each extra mask alone. ``max_segments`` > 0
    splits every group into instances of at most that many segments (viewers that choke on large
    SEGs). Segment numbers restart at 1 in every instance; instance numbers count from 1.
    """
    if seg_type not in SEG_TYPES:
        raise OutputError(f"SEG type {seg_type!r} is not one of {', '.join(SEG_TYPES)}")
    if max_segments < 0:
        raise OutputError(f"SEG max_segments must be >= 0 (0: no limit), got {max_segments}")
    naming = naming or OutputNaming()
    check_grid(series, result)
    boxes = check_structures(result, naming.catalogue)
    slice_planes(series)  # headers must agree with the volume the label map lies on
    structures = list(iter_structures(result, boxes, naming.catalogue))
    if not structures:
        raise OutputError("SegmentSequence: no non-empty structure to write (Type 1, needs an item)")
    series_uid = new_uid(identity.uid_root)
    groups = structure_groups(structures, set(result.extra_masks), seg_type, max_segments)
    instances = [_build_one(series, result, identity, naming, seg_type, group, series_uid, number)
                 for number, group in enumerate(groups, start=1)]
    if len(instances) > 1:
        log.info("SEG %s: %d instances in series %s", seg_type, len(instances), series_uid)
    return instances


def structure_groups(structures: list[StructureMask], extra_names: set[str], seg_type: str,
                     max_segments: int = 0) -> list[list[StructureMask]]:
    """Structures per SEG instance, in order (see :func:`build_seg_instances`)."""
    if seg_type == "LABELMAP":
        groups = [[s for s in structures if s.name not in extra_names]]
        groups += [[s] for s in structures if s.name in extra_names]
    else:
        groups = [structures]
    groups = [g for g in groups if g]
    if max_segments > 0:
        groups = [g[i:i + max_segments] for g in groups for i in range(0, len(g), max_segments)]
    return groups


def _build_one(series: CtSeries, result: SegmentationResult, identity: IdentitySettings, naming: OutputNaming,
               seg_type: str, structures: list[StructureMask], series_uid: str, instance_number: int) -> Dataset:
    descriptions = [_segment_description(number, s, result, identity, naming)
                    for number, s in enumerate(structures, start=1)]

    sources, frame_order = _source_images(series)

    def make(pixels: np.ndarray) -> hd.seg.Segmentation:
        return hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels if frame_order is None else pixels[frame_order],
            segmentation_type=hd.seg.SegmentationTypeValues[seg_type],
            segment_descriptions=descriptions,
            series_instance_uid=series_uid,
            series_number=identity.seg_series_number,
            sop_instance_uid=new_uid(identity.uid_root),
            instance_number=instance_number,
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

    try:
        seg = None
        if (seg_type == "BINARY" and frame_order is None
                and all(s.name not in result.extra_masks for s in structures)):
            seg = build_binary(series.datasets, structures, series.volume.shape, make)
        if seg is None:
            seg = make(_pixel_array(series, result, structures))
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputError(f"highdicom refused the {seg_type} segmentation (instance {instance_number}): "
                          f"{exc}") from exc
    complete_deidentification(seg)
    log.info("SEG %s instance %d: %d segments, %d frames", seg_type, instance_number, len(descriptions),
             int(seg.NumberOfFrames))
    return seg


def _source_images(series: CtSeries) -> tuple[list[Dataset], np.ndarray | None]:
    """What highdicom is given as source: the single-frame images in slice order, or the one
    multi-frame (Enhanced CT) image with the slice index of each of its frames.

    For a multi-frame source highdicom takes frame f of the pixel array as frame f of the source
    (it reads each frame's position from the source's functional groups), while the volume is in
    slice order; the returned order maps one to the other.
    """
    frames = series.frame_numbers
    if not frames or all(f is None for f in frames):
        return list(series.datasets), None
    uids = {str(ds.SOPInstanceUID) for ds in series.datasets}
    if len(uids) != 1 or any(f is None for f in frames):
        raise OutputError(f"SEG: the series mixes {len(uids)} instances with multi-frame images; a SEG can "
                          "reference the frames of one multi-frame image only")
    source = series.datasets[0]
    count = int(source.get("NumberOfFrames") or 0)
    if sorted(f for f in frames if f is not None) != list(range(1, count + 1)) or None in frames:
        raise OutputError(f"SEG: the volume holds {len(frames)} of the {count} frames of the Enhanced CT; "
                          "every frame must be a slice of the volume")
    return [source], np.argsort(np.asarray(frames))


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
    """Label-map style (segments renumbered) when the group has only label-map structures, stacked
    booleans otherwise (extra masks overlap the label map)."""
    shape = series.volume.shape
    by_name = {s.name: s.label for s in result.structures}
    if all(s.name in by_name and s.name not in result.extra_masks for s in structures):
        lut_dtype = np.uint8 if len(structures) < 256 else np.uint16
        labels = result.labels.array
        lut = np.zeros(int(labels.max()) + 1, dtype=lut_dtype)
        for number, structure in enumerate(structures, start=1):
            lut[by_name[structure.name]] = number
        segment_numbers: np.ndarray = lut[labels]
        return segment_numbers
    stacked = np.zeros((*shape, len(structures)), dtype=bool)
    for number, structure in enumerate(structures):
        k, j, i = structure.box
        stacked[k, j, i, number] = structure.mask
    return stacked
