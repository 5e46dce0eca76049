"""What the worker keeps beside a held job's objects (``review.json``): the objects written, and the
volume of each structure, read from the kept label map.

The job has no delivery rows while it is in review; approving it makes them from this list, as the
worker would have made them (``db.jobs.delivery_rows``). The queue shows the volumes without reading
a label map per job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from dicom_node.db.jobs import OutputObject
from dicom_node.errors import ReviewError
from dicom_node.private_files import write_private_bytes
from dicom_node.review.labels import StructureVolume, read_kept, volumes

log = logging.getLogger(__name__)

MANIFEST = "review.json"


@dataclass(frozen=True)
class HeldObject:
    """One object written for a held job (as ``pipeline.WrittenObject``, its path in the job's folder)."""

    kind: str
    path: Path
    sop_uid: str
    sop_class_uid: str
    seg_type: str = ""


@dataclass(frozen=True)
class Held:
    objects: tuple[HeldObject, ...]
    structures: tuple[StructureVolume, ...]


def keep_for_review(out_dir: Path, objects: Sequence[OutputObject]) -> Held:
    """Write ``review.json`` for the objects just written in ``out_dir`` (and its label map); the Held it says."""
    held = Held(tuple(HeldObject(o.kind, Path(str(o.path)), o.sop_uid, o.sop_class_uid, o.seg_type) for o in objects),
                tuple(volumes(read_kept(out_dir))))
    text = json.dumps({"objects": [{**asdict(o), "path": o.path.name} for o in held.objects],
                       "structures": [asdict(s) for s in held.structures]}, indent=2)
    try:
        write_private_bytes(out_dir / MANIFEST, text.encode("utf-8"))
    except OSError as exc:
        raise ReviewError(f"cannot write {MANIFEST} in the job's folder: {exc.strerror or exc}") from exc
    return held


def read_held(out_dir: Path) -> Held:
    """What :func:`keep_for_review` wrote, the paths back in ``out_dir``; ReviewError when it cannot be read."""
    try:
        data = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        objects = tuple(HeldObject(**{**o, "path": out_dir / o["path"]}) for o in data["objects"])
        structures = tuple(StructureVolume(**s) for s in data["structures"])
    except FileNotFoundError as exc:
        raise ReviewError(f"the job's outputs are gone ({MANIFEST} missing in its folder)") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReviewError(f"cannot read {MANIFEST} of the job: {exc}") from exc
    return Held(objects, structures)
