"""The objects an approval sends, written into a folder of their own in the job's folder (``approved-*``).

- Approve all: the objects as the worker wrote them (linked, not copied), the RTSTRUCT written again
  with the Approval module saying APPROVED by the reviewer (the same SOP Instance UID: the held copy
  was never sent anywhere).
- Approve a subset: every object kind the job wrote is built again from the kept label map with only
  the kept structures, by the same writer as the worker's (``pipeline.write_stage``): new SOP Instance
  and Series UIDs, the same identity, series numbers, template names, SEG variants and revision marks.

Each approval writes its own folder, so two reviewers approving at once cannot mix their files; the
one whose decision is not recorded removes its folder (:func:`discard`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from dicom_node.errors import DicomNodeError, ReviewError
from dicom_node.outputs.common import write_dataset
from dicom_node.outputs.revision import Revision
from dicom_node.outputs.rtstruct.approval import Approval, set_approval
from dicom_node.pipeline import write_stage
from dicom_node.review.held import HeldObject
from dicom_node.review.labels import read_kept, subset
from dicom_node.routing import RoutedAction
from dicom_node.series_io import load_series
from dicom_node.settings import OUTPUT_KINDS, IdentitySettings
from dicom_node.templates import OutputNaming

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobFiles:
    """What rebuilding a held job's objects needs: its folder, its routed action, its CT, what it replaces."""

    job_id: int
    out_dir: Path
    action: RoutedAction
    ct_paths: tuple[Path, ...]
    revision: Revision | None


def new_folder(out_dir: Path) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix="approved-", dir=out_dir))  # 0700, like the job's folder
    except OSError as exc:
        raise ReviewError(f"cannot write in the job's folder: {exc.strerror or exc}") from exc


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def approve_as_written(objects: Sequence[HeldObject], approval: Approval, folder: Path) -> list[HeldObject]:
    """The held objects in ``folder``, the RTSTRUCT marked APPROVED."""
    out = []
    for obj in objects:
        target = folder / obj.path.name
        try:
            if obj.kind == "RTSTRUCT":
                ds = pydicom.dcmread(obj.path)
                set_approval(ds, approval)
                write_dataset(ds, target)
            else:
                _link_or_copy(obj.path, target)
        except FileNotFoundError as exc:
            raise ReviewError(f"the job's {obj.kind} file {obj.path.name} is gone") from exc
        except (OSError, InvalidDicomError) as exc:
            raise ReviewError(f"cannot write the approved {obj.kind}: {exc}") from exc
        out.append(HeldObject(obj.kind, target, obj.sop_uid, obj.sop_class_uid, obj.seg_type))
    return out


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # the written objects are never changed in place (written by rename)
    except OSError:
        shutil.copy2(source, target)


def approve_subset(job: JobFiles, kinds: Collection[str], keep: Collection[str], identity: IdentitySettings,
                   approval: Approval, folder: Path) -> list[HeldObject]:
    """Every kind in ``kinds`` written again into ``folder`` with only the ``keep`` structures."""
    kept = read_kept(job.out_dir)
    ordered = [k for k in OUTPUT_KINDS if k in kinds]
    try:
        series = load_series(list(job.ct_paths), pixels="PREVIEW" in ordered)
        result = subset(kept, keep, series.volume)
        template = job.action.template
        naming = OutputNaming() if template is None else OutputNaming(
            template.name, {k: v for k, v in template.rename.items() if k in keep})
        written = write_stage(series, result, ordered, identity, folder, naming, job.action.seg_types,
                              job.action.seg_max_segments, job.revision, approval)
    except ReviewError:
        raise
    except DicomNodeError as exc:  # the CT cannot be read again, or an object cannot be built
        raise ReviewError(f"the objects of job {job.job_id} cannot be written again: {exc}") from exc
    log.info("job %d: %d object(s) written again with %d of %d structures", job.job_id, len(written), len(keep),
             len(kept.names))
    return [HeldObject(o.kind, o.path, o.sop_uid, o.sop_class_uid, o.seg_type) for o in written]
