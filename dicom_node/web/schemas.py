"""The JSON API's answers, as pydantic models: FastAPI's OpenAPI schema describes exactly these."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from dicom_node.db.overview import SeriesRow
from dicom_node.db.tables import Delivery, Job


class WorkerOut(BaseModel):
    worker_id: str
    last_heartbeat: datetime | None
    device: str
    current_job: int | None


class FailureOut(BaseModel):
    job_id: int
    rule_name: str
    error: str
    finished_at: datetime | None


class DashboardOut(BaseModel):
    listener_open_associations: int
    last_instance_at: datetime | None
    workers: list[WorkerOut]
    queue_depth: int
    jobs_by_status: dict[str, int]
    free_disk_mb: int | None
    config_version: int | None
    last_failures: list[FailureOut]


class SeriesDetailOut(BaseModel):
    series: SeriesRow  # the index's row, identifiers masked for roles that may not see them
    header: dict[str, str]  # identifying header elements of its first instance, masked for viewers
    jobs: list[int]


class DeliveryOut(BaseModel):
    id: int
    job_id: int | None  # None: a manual `dicom-node send`
    destination: str
    kind: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str
    sent_at: datetime | None
    transfer_syntax: str  # keyword of the syntax it was sent in ('' until sent)

    @classmethod
    def of(cls, row: Delivery) -> DeliveryOut:
        return cls(id=row.id, job_id=row.job_id, destination=row.destination, kind=row.kind, status=row.status.value,
                   attempts=row.attempts, next_attempt_at=row.next_attempt_at, last_error=row.last_error,
                   sent_at=row.sent_at, transfer_syntax=row.transfer_syntax or "")


class JobOut(BaseModel):
    id: int
    series_id: int
    rule_name: str
    status: str
    stage: str
    model_id: str
    model_version: str
    device: str
    instance_count: int
    attempts: int
    worker_id: str
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timings: dict[str, float]

    @classmethod
    def of(cls, row: Job, timings: dict[str, float]) -> JobOut:
        error = f"{row.error_class}: {row.error_message}" if row.error_class else ""
        return cls(id=row.id, series_id=row.series_id, rule_name=row.rule_name, status=row.status.value,
                   stage=row.stage, model_id=row.model_id, model_version=row.model_version, device=row.device,
                   instance_count=row.instance_count, attempts=row.attempts, worker_id=row.worker_id, error=error,
                   created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
                   timings=timings)


class JobDetailOut(BaseModel):
    job: JobOut
    deliveries: list[DeliveryOut]
    has_preview: bool


class ActionOut(BaseModel):
    ok: bool
    message: str


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]


class UserOut(BaseModel):
    name: str
    role: str
    disabled: bool
    created_at: datetime
    api_tokens: int


class ProblemOut(BaseModel):
    field: str
    path: str
    message: str


class ConfigWriteOut(BaseModel):
    ok: bool
    version: int | None
    problems: list[ProblemOut]


class EchoOut(BaseModel):
    ok: bool
    status: int | None
    message: str


class VerdictOut(BaseModel):
    rule: str
    applies: bool
    fallback: bool
    reasons: list[str]


class DryRunOut(BaseModel):
    attributes: dict[str, str]
    verdicts: list[VerdictOut]
    jobs: list[dict[str, Any]]  # the routed action of each job the series would get
    error: str = ""
