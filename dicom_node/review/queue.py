"""The review queue: the jobs waiting for a decision, the longest waiting first, and one job's detail.

Each entry has how long it has waited, its rule, model and structures: the catalogue name, the name
the objects give it (the template's rename), its volume in ml from the kept label map, and its
catalogue colour (what the review page draws it in). Patient identifiers are in the entry; the web
layer masks them for roles that may not see them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import jobs, review
from dicom_node.db.review import HeldJob
from dicom_node.db.tables import utcnow
from dicom_node.errors import ReviewError
from dicom_node.housekeeping import job_output_dir
from dicom_node.review.held import read_held
from dicom_node.routing import RoutedAction, RoutingError
from dicom_node.settings import Settings
from segmenter.core.catalogue import StructureInfo, load_catalogue

log = logging.getLogger(__name__)

UNKNOWN_COLOUR = (128, 128, 128)  # a structure the catalogue no longer has


@dataclass(frozen=True)
class QueueStructure:
    name: str  # catalogue name: what ``approve(keep=...)`` takes
    roi_name: str  # as the SEG and RTSTRUCT name it (the template's rename, else the catalogue name)
    volume_ml: float
    voxels: int
    colour: tuple[int, int, int]
    rt_type: str  # RT ROI Interpreted Type: ORGAN, AVOIDANCE, PTV ...


@dataclass(frozen=True)
class QueueEntry:
    job_id: int
    series_id: int
    status: str
    rule_name: str
    model_id: str
    model_version: str
    review_since: datetime | None
    waited_seconds: int  # until now while in review; until the decision after it
    reviewers: tuple[str, ...]
    outputs: tuple[str, ...]  # object kinds written: SEG, RTSTRUCT, SR, PREVIEW
    destinations: tuple[str, ...]
    structures: tuple[QueueStructure, ...]
    problem: str  # why the structures cannot be listed (the outputs are gone), else ""
    series_uid: str
    series_description: str
    study_date: str
    patient_id: str
    accession_number: str
    # the decision, once made
    decision: str
    reviewed_by: str
    reviewed_at: datetime | None
    reason: str
    kept: tuple[str, ...] | None


def _entry(settings: Settings, held: HeldJob, catalogue: dict[str, StructureInfo], now: datetime) -> QueueEntry:
    job = held.job
    try:
        action: RoutedAction | None = jobs.parse_action(job.id, job.action)
    except RoutingError:
        action = None
    rename = dict(action.template.rename) if action is not None and action.template is not None else {}
    problem, structures = "", []
    try:
        for volume in read_held(job_output_dir(settings.worker.output_dir, job.id)).structures:
            info = catalogue.get(volume.name)
            structures.append(QueueStructure(volume.name, rename.get(volume.name, volume.name), volume.volume_ml,
                                             volume.voxels, info.colour if info else UNKNOWN_COLOUR,
                                             info.rt_type if info else ""))
    except ReviewError as exc:
        problem = str(exc)
    until = job.reviewed_at or now
    waited = int((until - job.review_since).total_seconds()) if job.review_since is not None else 0
    kept = review.kept_of(job)
    return QueueEntry(
        job_id=job.id, series_id=job.series_id, status=job.status.value, rule_name=job.rule_name,
        model_id=job.model_id, model_version=job.model_version, review_since=job.review_since,
        waited_seconds=max(0, waited), reviewers=action.reviewers if action else (),
        outputs=action.outputs if action else (), destinations=tuple(d.name for d in action.destinations)
        if action else (), structures=tuple(structures), problem=problem, series_uid=held.series_uid,
        series_description=held.series_description, study_date=held.study_date, patient_id=held.patient_key,
        accession_number=held.accession_number, decision=job.review_decision, reviewed_by=job.reviewed_by,
        reviewed_at=job.reviewed_at, reason=job.review_reason, kept=None if kept is None else tuple(kept))


def review_queue(settings: Settings, factory: sessionmaker[Session], limit: int = 500) -> list[QueueEntry]:
    """The jobs in review, the longest waiting first."""
    catalogue, now = load_catalogue(), utcnow()
    with factory() as session:
        return [_entry(settings, held, catalogue, now) for held in review.in_review(session, limit)]


def review_entry(settings: Settings, factory: sessionmaker[Session], job_id: int) -> QueueEntry | None:
    """A job that is or was held for review, whatever its state now; None for any other job."""
    with factory() as session:
        held = review.held_job(session, job_id)
        return None if held is None else _entry(settings, held, load_catalogue(), utcnow())
