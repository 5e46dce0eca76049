"""Read-only SQL for the web admin's pages and /metrics: the listener, workers, series, jobs, deliveries.

Nothing here writes. Patient identifiers are returned to the caller, which masks them for roles that
may not see them (``dicom_node.web.phi``); they are never logged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from dicom_node.db.tables import (
    Association,
    AssociationAudit,
    AuditResult,
    Delivery,
    DeliveryStatus,
    Instance,
    Job,
    JobStatus,
    Patient,
    Series,
    Study,
)


@dataclass(frozen=True)
class WorkerView:
    worker_id: str
    last_heartbeat: datetime | None
    device: str
    current_job: int | None


@dataclass(frozen=True)
class SeriesRow:
    id: int
    series_uid: str
    study_uid: str
    patient_id: str
    study_date: str
    accession_number: str
    modality: str
    description: str
    body_part: str
    state: str
    instance_count: int
    expected_count: int | None
    completion_reason: str
    first_received_at: datetime
    last_received_at: datetime


def open_associations(session: Session) -> int:
    return int(session.scalar(select(func.count(Association.id)).where(Association.closed_at.is_(None))) or 0)


def last_instance_at(session: Session) -> datetime | None:
    return session.scalar(select(func.max(Instance.received_at)))


def workers(session: Session) -> list[WorkerView]:
    """Every worker that ever claimed a job: its last heartbeat, device and the job it runs now (if any)."""
    out = []
    rows = session.execute(select(Job.worker_id, func.max(Job.heartbeat_at)).where(Job.worker_id != "")
                           .group_by(Job.worker_id).order_by(Job.worker_id)).all()
    for worker_id, beat in rows:
        running = session.scalar(select(Job.id).where(Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)
                                 .order_by(Job.id.desc()).limit(1))
        device = session.scalar(select(Job.device).where(Job.worker_id == worker_id, Job.device != "")
                                .order_by(Job.id.desc()).limit(1)) or ""
        out.append(WorkerView(str(worker_id), beat, device, running))
    return out


def jobs_by_status(session: Session) -> dict[str, int]:
    counts = {status.value: 0 for status in JobStatus}
    for status, count in session.execute(select(Job.status, func.count(Job.id)).group_by(Job.status)):
        counts[JobStatus(status).value] = int(count)
    return counts


def recent_failures(session: Session, limit: int = 10) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.status == JobStatus.FAILED)
                                .order_by(Job.finished_at.desc(), Job.id.desc()).limit(limit)))


def _series_query() -> Select[Series, str, str, str, str]:
    return (select(Series, Study.study_uid, Study.study_date, Patient.patient_key, Study.accession_number)
            .join(Study, Study.id == Series.study_id).join(Patient, Patient.id == Study.patient_id))


def _series_row(series: Series, study_uid: str, study_date: str, patient_key: str, accession: str) -> SeriesRow:
    return SeriesRow(series.id, series.series_uid, study_uid, patient_key, study_date, accession, series.modality,
                     series.description, series.body_part, series.state.value, series.instance_count,
                     series.expected_count, series.completion_reason, series.first_received_at,
                     series.last_received_at)


def series_list(session: Session, patient_id: str = "", uid: str = "", limit: int = 100,
                accession: str = "") -> list[SeriesRow]:
    """Newest first; ``patient_id`` and ``accession`` match exactly, ``uid`` a series or study UID exactly."""
    query = _series_query().order_by(Series.last_received_at.desc(), Series.id.desc()).limit(limit)
    if patient_id:
        query = query.where(Patient.patient_key == patient_id)
    if accession:
        query = query.where(Study.accession_number == accession)
    if uid:
        query = query.where(or_(Series.series_uid == uid, Study.study_uid == uid))
    return [_series_row(*row) for row in session.execute(query).all()]


def series_row(session: Session, series_id: int) -> SeriesRow | None:
    row = session.execute(_series_query().where(Series.id == series_id)).first()
    return None if row is None else _series_row(*row)


def first_instance_path(session: Session, series_id: int) -> str | None:
    return session.scalar(select(Instance.path).where(Instance.series_id == series_id).order_by(Instance.id).limit(1))


def jobs_list(session: Session, status: str = "", series_id: int | None = None, limit: int = 100) -> list[Job]:
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status:
        query = query.where(Job.status == JobStatus(status))
    if series_id is not None:
        query = query.where(Job.series_id == series_id)
    return list(session.scalars(query))


def job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def timings_of(job_row: Job) -> dict[str, float]:
    try:
        value = json.loads(job_row.timings) if job_row.timings else {}
    except ValueError:
        return {}
    return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)} if isinstance(value, dict) else {}


def deliveries_list(session: Session, status: str = "", destination: str = "", limit: int = 200) -> list[Delivery]:
    query = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
    if status:
        query = query.where(Delivery.status == DeliveryStatus(status))
    if destination:
        query = query.where(Delivery.destination == destination)
    return list(session.scalars(query))


# -- /metrics: aggregates read at scrape time, so every process's work is counted --------------------------


def instance_totals(session: Session) -> tuple[int, int]:
    """Instances in the index and their bytes."""
    row = session.execute(select(func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))).one()
    return int(row[0]), int(row[1])


def received_totals(session: Session) -> tuple[int, int]:
    """Instances and bytes the receiver ever committed (the series' counters, which housekeeping keeps)."""
    row = session.execute(select(func.coalesce(func.sum(Series.received_instances), 0),
                                 func.coalesce(func.sum(Series.received_bytes), 0))).one()
    return int(row[0]), int(row[1])


def association_audit_totals(session: Session) -> dict[str, int]:
    """Rows of the association audit by result (accepted, rejected, refused, dropped); each state listed."""
    counts = {result.value: 0 for result in AuditResult}
    for result, count in session.execute(select(AssociationAudit.result, func.count(AssociationAudit.id))
                                         .group_by(AssociationAudit.result)):
        counts[AuditResult(result).value] = int(count)
    return counts


def association_totals(session: Session) -> tuple[int, int]:
    """Associations recorded, and those of them that were aborted (closed without a release)."""
    total = session.scalar(select(func.count(Association.id))) or 0
    aborted = session.scalar(select(func.count(Association.id)).where(Association.closed_at.is_not(None),
                                                                      Association.released.is_(False))) or 0
    return int(total), int(aborted)


def series_by_reason(session: Session) -> dict[tuple[str, str], int]:
    """(state, completion reason) -> series, for the series judged complete."""
    rows = session.execute(select(Series.state, Series.completion_reason, func.count(Series.id))
                           .where(Series.completion_reason != "").group_by(Series.state, Series.completion_reason))
    return {(state.value, str(reason)): int(count) for state, reason, count in rows}


def deliveries_by_outcome(session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(select(Delivery.destination, Delivery.status, func.count(Delivery.id))
                           .group_by(Delivery.destination, Delivery.status))
    return {(str(dest), DeliveryStatus(status).value): int(count) for dest, status, count in rows}


def recent_timings(session: Session, limit: int = 1000) -> list[dict[str, float]]:
    """The stage timings of the last ``limit`` finished jobs."""
    jobs = session.scalars(select(Job).where(Job.timings != "").order_by(Job.id.desc()).limit(limit))
    return [timings_of(j) for j in jobs]
