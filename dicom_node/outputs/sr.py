"""DICOM SR (Comprehensive 3D SR, TID 1500 Measurement Report): the volume of every structure.

One measurement group per non-empty structure, tracked by a new UID and the structure's (site) name,
with the catalogue's SCT category and type as finding category and type, the model as algorithm and
one measurement: Volume (SCT 118565006) in cm3, computed as the structure's voxel count times the
voxel volume (method DCM 126030 "Sum of segmented voxel volumes").

When the SEG written for the same job is given, each group is a TID 1411 volumetric group whose
region is that SEG's segment of the same structure (so a viewer shows which voxels were measured);
without a SEG each group is a TID 1501 group that names the CT series as its source. The CT images
(and the SEG) are the SR's evidence either way. A job writing several SEG variants (LABELMAP for one
destination, BINARY for another) gets one SR per variant, each referring to its own variant's
instances (``pipeline.write_stage``): a TID 1411 group holds one segment reference, and a viewer
can only resolve references to a SEG its archive received.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_node.errors import OutputError
from dicom_node.outputs.common import (
    StructureMask,
    check_grid,
    check_structures,
    complete_deidentification,
    iter_structures,
    new_uid,
    series_description,
)
from dicom_node.series_io import CtSeries
from dicom_node.settings import IdentitySettings
from dicom_node.templates import OutputNaming
from segmenter.core.catalogue import Catalogue
from segmenter.core.catalogue import Code as CatalogueCode
from segmenter.core.result import SegmentationResult

log = logging.getLogger(__name__)

# the two TID 1500 measurement groups: a planar (per-slice) or a volumetric ROI
MeasurementGroup = (hd.sr.MeasurementsAndQualitativeEvaluations
                    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations)

SUM_OF_VOXEL_VOLUMES = Code("126030", "DCM", "Sum of segmented voxel volumes")
# Segmentation Storage and Label Map Segmentation Storage
SEGMENTATION_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})
MM3_PER_CM3 = 1000.0
LATERALITY_CODES = frozenset({"7771000", "24028007", "51440002"})  # SCT Left, Right, Bilateral


def structure_volumes_cm3(result: SegmentationResult, catalogue: Catalogue | None = None) -> dict[str, float]:
    """Catalogue name -> volume in cm3 (voxel count x voxel volume) of every non-empty structure."""
    voxel_cm3 = result.labels.voxel_volume_mm3 / MM3_PER_CM3
    return {s.name: s.voxel_count * voxel_cm3 for s in iter_structures(result, catalogue=catalogue)}


def build_sr(series: CtSeries, result: SegmentationResult, identity: IdentitySettings,
             naming: OutputNaming | None = None, seg: Dataset | Sequence[Dataset] | None = None) -> Dataset:
    """A Comprehensive 3D SR measurement report of the structure volumes, or OutputError.

    ``seg`` (the SEG of the same result as built by the SEG writer: one instance, or the instances
    of one SEG series) makes every measurement refer to the segment of its structure; every
    structure must then have a segment of its (site) name.
    """
    segs = [seg] if isinstance(seg, Dataset) else list(seg or [])
    naming = naming or OutputNaming()
    check_grid(series, result)
    boxes = check_structures(result, naming.catalogue)
    structures = list(iter_structures(result, boxes, naming.catalogue))
    if not structures:
        raise OutputError("SR: no non-empty structure to measure (the measurement report needs a group)")
    voxel_cm3 = result.labels.voxel_volume_mm3 / MM3_PER_CM3
    segments: dict[str, tuple[Dataset, int]] = {}
    for instance in segs:
        segments.update(_segment_numbers(instance, series))
    algorithm = hd.sr.AlgorithmIdentification(name=result.model_id, version=result.model_version)
    groups: list[MeasurementGroup] = []
    for structure in structures:
        label = naming.display(structure.name)
        if segs and label not in segments:
            raise OutputError(f"SR: the SEG has no segment labelled {label!r} (segments: {', '.join(segments)})")
        volume = structure.voxel_count * voxel_cm3
        groups.append(_group(structure, label, volume, algorithm, identity, series, segments.get(label)))
    try:
        report = hd.sr.MeasurementReport(
            observation_context=_observation_context(identity),
            procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
            imaging_measurements=groups,
        )
        evidence = list(series.datasets) + segs
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=new_uid(identity.uid_root),
            series_number=identity.sr_series_number,
            sop_instance_uid=new_uid(identity.uid_root),
            instance_number=1,
            manufacturer=identity.manufacturer,
            institution_name=identity.institution_name or None,
            is_complete=True,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputError(f"highdicom refused the SR measurement report: {exc}") from exc
    sr.SeriesDescription = series_description(identity, "structure volumes", result)
    sr.ManufacturerModelName = identity.manufacturer_model_name
    sr.SoftwareVersions = identity.software_version
    sr.DeviceSerialNumber = identity.device_serial_number
    complete_deidentification(sr)
    log.info("SR: volumes of %d structures%s", len(groups), " (referencing the SEG)" if segs else "")
    return sr


def _code(code: CatalogueCode) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def _observation_context(identity: IdentitySettings) -> hd.sr.ObservationContext:
    """The node as the observer: a device UID that stays the same for the same configured identity."""
    device_uid = str(generate_uid(prefix=identity.uid_root.rstrip(".") + ".", entropy_srcs=[
        identity.manufacturer, identity.manufacturer_model_name, identity.device_serial_number]))
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid, name=identity.manufacturer_model_name[:64], manufacturer_name=identity.manufacturer,
        model_name=identity.manufacturer_model_name, serial_number=identity.device_serial_number)
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _segment_numbers(seg: Dataset, series: CtSeries) -> dict[str, tuple[Dataset, int]]:
    """Segment label -> (SEG, number) of a SEG made on ``series`` (checked: same study, that series)."""
    if str(seg.get("SOPClassUID", "")) not in SEGMENTATION_CLASSES:
        raise OutputError(f"SR: the referenced SEG has SOPClassUID {seg.get('SOPClassUID', '')!r}, "
                          "not a Segmentation Storage class")
    if str(seg.get("StudyInstanceUID", "")) != series.study_uid:
        raise OutputError("SR: the referenced SEG belongs to another study than the CT series")
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    if series.series_uid not in referenced:
        raise OutputError(f"SR: the referenced SEG was not made on CT series {series.series_uid}")
    return {str(item.SegmentLabel): (seg, int(item.SegmentNumber)) for item in seg.SegmentSequence}


def _group(structure: StructureMask, label: str, volume_cm3: float, algorithm: hd.sr.AlgorithmIdentification,
           identity: IdentitySettings, series: CtSeries, segment: tuple[Dataset, int] | None) -> MeasurementGroup:
    info = structure.info
    if not np.isfinite(volume_cm3) or volume_cm3 <= 0:
        raise OutputError(f"SR: structure {structure.name}: volume {volume_cm3!r} cm3 is not a positive number")
    try:
        tracking = hd.sr.TrackingIdentifier(uid=new_uid(identity.uid_root), identifier=label)
        measurement = hd.sr.Measurement(
            name=codes.SCT.Volume, value=round(volume_cm3, 4), unit=codes.UCUM.CubicCentimeter,
            method=SUM_OF_VOXEL_VOLUMES, algorithm_id=algorithm)
        common = dict(tracking_identifier=tracking, finding_type=_code(info.type),
                      finding_category=_code(info.category), algorithm_id=algorithm, measurements=[measurement])
        if info.modifier is not None:  # refines the finding: laterality (Lung + Left) or a topographical part
            where = ("laterality" if info.modifier.value in LATERALITY_CODES else "topographical_modifier")
            common["finding_sites"] = [hd.sr.FindingSite(anatomic_location=_code(info.type),
                                                         **{where: _code(info.modifier)})]
        if segment is not None:
            seg, number = segment
            reference = hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=number, source_series=hd.sr.SourceSeriesForSegmentation(series.series_uid))
            return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=reference, **common)  # type: ignore[arg-type]
        return hd.sr.MeasurementsAndQualitativeEvaluations(**common)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise OutputError(f"SR: measurement group of {structure.name}: {exc}") from exc
