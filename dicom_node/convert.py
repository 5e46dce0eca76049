"""Label maps from elsewhere -> DICOM-SEG, RTSTRUCT (and SR, preview) on the CT they came from (``dicom-node write``).

A label map (NIfTI, NRRD, MHA: TotalSegmentator's output, a research model, a colleague's mask) and a
mapping of its label values to catalogue structures become the same objects the node sends. When
the label map lies on another grid than the CT (TotalSegmentator writes LAS NIfTI; a model may have
cropped or resampled) it is resampled onto the CT grid in physical space with nearest-neighbour
interpolation, so every label keeps its value and lands where it was in the patient.

Series whose Study or Series Instance UID was blanked by an exporter get new ones under the
configured UID root (with a warning): the outputs then form a consistent study of their own rather
than objects that reference nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicom_node.errors import OutputError
from dicom_node.outputs.common import GEOMETRY_TOLERANCE, label_boxes, new_uid
from dicom_node.pipeline import WrittenObject, write_stage
from dicom_node.series_io import CtSeries
from dicom_node.settings import OUTPUT_KINDS, IdentitySettings
from dicom_node.templates import OutputNaming
from segmenter.core.catalogue import Catalogue
from segmenter.core.result import LabelledStructure, SegmentationResult
from segmenter.core.volume import Volume

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "imported-label-map"
DEFAULT_MODEL_VERSION = "unknown"


def same_grid(a: Volume, b: Volume, tolerance: float = GEOMETRY_TOLERANCE) -> bool:
    """Do two volumes share shape, spacing, origin and direction (within ``tolerance`` mm / cosine)?"""
    return (a.shape == b.shape
            and np.allclose(a.spacing, b.spacing, atol=tolerance, rtol=0)
            and np.allclose(a.origin, b.origin, atol=tolerance, rtol=0)
            and np.allclose(a.direction, b.direction, atol=tolerance, rtol=0))


def resample_labels(labels: Volume, reference: Volume) -> Volume:
    """``labels`` on ``reference``'s grid: nearest neighbour in physical space, 0 outside the label map.

    The array is returned as uint8 (or uint16 when a label exceeds 255); a label map already on the
    grid is only re-typed, never interpolated.
    """
    array = np.asarray(labels.array)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise OutputError(f"label map: values must be whole numbers, got dtype {array.dtype} with fractions")
    if array.size and array.min() < 0:
        raise OutputError("label map: negative values (labels must be 0 for background or a structure's label)")
    top = int(array.max()) if array.size else 0
    if top > np.iinfo(np.uint16).max:
        raise OutputError(f"label map: label {top} exceeds 65535")
    dtype = np.uint8 if top <= np.iinfo(np.uint8).max else np.uint16
    typed = labels.with_array(array.astype(dtype, copy=False))
    if same_grid(typed, reference):
        return reference.with_array(typed.array)
    log.info("label map grid %s differs from the CT grid %s: resampling (nearest neighbour, physical space)",
             labels.shape, reference.shape)
    grid = sitk.Image([int(n) for n in reference.shape[::-1]], sitk.sitkUInt8)
    grid.SetSpacing(reference.spacing)
    grid.SetOrigin(reference.origin)
    grid.SetDirection(reference.direction)
    try:
        moved = sitk.Resample(typed.to_sitk(), grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              sitk.sitkUInt8 if dtype == np.uint8 else sitk.sitkUInt16)
    except RuntimeError as exc:
        raise OutputError(f"cannot resample the label map onto the CT grid: {exc}") from exc
    resampled = sitk.GetArrayFromImage(moved)
    if top and not resampled.any():
        raise OutputError("label map does not overlap the CT volume in patient space (check its orientation/origin)")
    return reference.with_array(resampled)


def result_from_labels(labels: Volume, mapping: dict[int, str], model_id: str = DEFAULT_MODEL_ID,
                       model_version: str = DEFAULT_MODEL_VERSION) -> SegmentationResult:
    """A SegmentationResult of a label map whose values ``mapping`` names; unmapped values are an error."""
    if not np.issubdtype(labels.array.dtype, np.integer) or (labels.array.size and labels.array.min() < 0):
        raise OutputError(f"label map: values must be whole numbers >= 0, got dtype {labels.array.dtype}")
    # find_objects, not bincount: bincount would first copy a 512x512x300 uint8 map into int64 (600 MiB)
    present = [value for value, box in enumerate(label_boxes(labels.array), start=1) if box is not None]
    unmapped = sorted(v for v in present if v not in mapping)
    if unmapped:
        raise OutputError(f"label map: value(s) {unmapped} have no structure in the structures file")
    structures = tuple(LabelledStructure(label, name) for label, name in sorted(mapping.items()))
    return SegmentationResult(labels, structures, model_id, model_version)


def fill_missing_uids(series: CtSeries, uid_root: str) -> CtSeries:
    """The series with blank Study/Series/Frame of Reference UIDs replaced by new ones (headers copied)."""
    missing = [what for what, value in (("StudyInstanceUID", series.study_uid),
                                        ("SeriesInstanceUID", series.series_uid),
                                        ("FrameOfReferenceUID", series.frame_of_reference_uid)) if not value]
    if not missing:
        return series
    new = {keyword: new_uid(uid_root) for keyword in missing}
    log.warning("the CT series has no %s: generated new UID(s) under %s; the outputs will not attach to "
                "the original study in a PACS", ", ".join(missing), uid_root)
    headers = []
    for ds in series.datasets:
        copy = deepcopy(ds)  # Dataset.copy() shares the elements with the original
        for keyword, uid in new.items():
            setattr(copy, keyword, uid)
        headers.append(copy)
    return replace(series, datasets=tuple(headers),
                   study_uid=new.get("StudyInstanceUID", series.study_uid),
                   series_uid=new.get("SeriesInstanceUID", series.series_uid),
                   frame_of_reference_uid=new.get("FrameOfReferenceUID", series.frame_of_reference_uid))


def write_objects(series: CtSeries, result: SegmentationResult, kinds: Sequence[str], identity: IdentitySettings,
                  out_dir: Path, catalogue: Catalogue | None = None) -> list[WrittenObject]:
    """Build and save each requested kind (``SEG``, ``RTSTRUCT``, ``SR``, ``PREVIEW``) as ``out_dir/<kind>.dcm``
    with the writer jobs use (``pipeline.write_stage``): a BINARY SEG in one instance, the SR after
    the SEG and referring to its segments when both are written; PREVIEW also writes ``preview.png``.
    ``catalogue``: the node's (with its department structures); the built-in one when None.
    """
    if not kinds:
        raise OutputError(f"output kinds must be some of {', '.join(OUTPUT_KINDS)}, got none")
    return write_stage(series, result, kinds, identity, out_dir, OutputNaming(catalogue=catalogue))
