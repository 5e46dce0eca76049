"""A new version of a job's outputs: what each object says about the version it replaces.

A series that grew after its first outputs were delivered is contoured again (see
``dicom_node.db.supersession``); the new objects are new instances in new series, and each says
what it replaces in the attribute a planning system or viewer shows, or the one DICOM defines:

- every kind: SeriesDescription ends with `` v2`` (v3 ...), the column every series list shows;
- RTSTRUCT: StructureSetDescription reads "Version 2: replaces structure set <SOP UID> of series
  <UID> ...", and Predecessor Structure Set Sequence (3006,0018) references the old structure set;
- SR: Predecessor Documents Sequence (0040,A360) references the old SR (TID 1500 revisions);
- SEG: ContentDescription reads "v2, replaces series <UID>" where that fits its 64 characters,
  otherwise "v2, replaces an earlier SEG";
- PREVIEW (Secondary Capture): ImageComments reads "Version 2: replaces series <UID>".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

log = logging.getLogger(__name__)

MAX_LO = 64


class DeliveredLike(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def sop_uid(self) -> str: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def path(self) -> str: ...


@dataclass(frozen=True)
class ReplacedObject:
    kind: str
    sop_uid: str
    sop_class_uid: str
    series_uid: str  # "" when the old file is gone (housekeeping removed it)


@dataclass(frozen=True)
class Revision:
    version: int  # 2 for the first replacement
    replaced: tuple[ReplacedObject, ...]

    def of_kind(self, kind: str) -> ReplacedObject | None:
        return next((r for r in self.replaced if r.kind == kind), None)


def revision_from(version: int, delivered: Iterable[DeliveredLike]) -> Revision:
    """The revision with the old objects' series UIDs read from their files (where still there)."""
    return Revision(version, tuple(ReplacedObject(d.kind, d.sop_uid, d.sop_class_uid, _series_uid(Path(d.path)))
                                   for d in delivered))


def _series_uid(path: Path) -> str:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except (OSError, InvalidDicomError) as exc:
        log.info("the replaced object's file is not readable (%s); its series is not named", type(exc).__name__)
        return ""
    return str(ds.get("SeriesInstanceUID", ""))


def versioned(text: str, version: int) -> str:
    suffix = f" v{version}"
    return text[:MAX_LO - len(suffix)] + suffix


def mark_revision(ds: Dataset, kind: str, revision: Revision) -> None:
    """Write into ``ds`` (an object of ``kind`` about to be saved) what it replaces."""
    n = revision.version
    ds.SeriesDescription = versioned(str(ds.get("SeriesDescription", "")), n)
    old = revision.of_kind(kind)
    series = f"series {old.series_uid}" if old is not None and old.series_uid else f"an earlier {kind}"
    if kind == "SEG":
        text = f"v{n}, replaces {series}"
        ds.ContentDescription = text if len(text) <= MAX_LO else f"v{n}, replaces an earlier SEG"
    elif kind == "RTSTRUCT":
        what = f"structure set {old.sop_uid} of {series}" if old is not None else "an earlier structure set"
        ds.StructureSetDescription = (f"Version {n}: replaces {what}, which was made before the CT series "
                                      "had all its instances")
        if old is not None:
            ds.PredecessorStructureSetSequence = [_sop_reference(old)]
    elif kind == "SR":
        if old is not None and old.series_uid:
            item = Dataset()
            item.StudyInstanceUID = ds.StudyInstanceUID
            series_item = Dataset()
            series_item.SeriesInstanceUID = old.series_uid
            series_item.ReferencedSOPSequence = [_sop_reference(old)]
            item.ReferencedSeriesSequence = [series_item]
            ds.PredecessorDocumentsSequence = [item]
    elif kind == "PREVIEW":
        ds.ImageComments = f"Version {n}: replaces {series}"


def _sop_reference(old: ReplacedObject) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = old.sop_class_uid
    ref.ReferencedSOPInstanceUID = old.sop_uid
    return ref
