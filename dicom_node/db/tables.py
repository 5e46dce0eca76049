"""SQLAlchemy 2 typed models of the index: patient/study/series/instance, jobs and deliveries.

Patient identifiers are stored because the index must group studies, but they are never logged.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class SeriesState(str, enum.Enum):
    RECEIVING = "receiving"  # instances may still arrive
    DISPATCHED = "dispatched"  # judged complete; jobs enqueued for the instances held then
    IGNORED = "ignored"  # complete but no routing rule matched
    PURGED = "purged"  # fully delivered; its instances were removed by housekeeping (purged_at says when)


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DELIVERING = "delivering"  # outputs written; some deliveries pending
    DONE = "done"
    FAILED = "failed"
    # late instances made the series grow before this job delivered anything; it sends nothing more
    # and ``superseded_by`` names the job of the grown series (see dicom_node.scheduler)
    SUPERSEDED = "superseded"
    # outputs written and held: its rule requires a person's decision before anything is sent (dicom_node.review)
    REVIEW = "review"
    REJECTED = "rejected"  # a reviewer rejected the outputs: nothing was sent, nothing will be


class DeliveryStatus(str, enum.Enum):
    PENDING = "pending"  # to be sent at next_attempt_at; a worker holds it while lease_until is ahead
    SENT = "sent"  # the destination answered success; never sent again
    DEAD = "dead"  # dead letter: not sent within the destination's max_age_hours; last_error says why


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_key: Mapped[str] = mapped_column(String(128), unique=True)  # PatientID, or a stand-in when empty


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    study_date: Mapped[str] = mapped_column(String(8), default="")
    # PHI like the patient ID: searched by roles that may see it, masked for viewers, never logged
    accession_number: Mapped[str] = mapped_column(String(16), default="", server_default="")


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    modality: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(16), default="")
    expected_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[SeriesState] = mapped_column(Enum(SeriesState, native_enum=False, length=16),
                                               default=SeriesState.RECEIVING)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    dispatched_count: Mapped[int] = mapped_column(Integer, default=0)  # instances covered by enqueued jobs
    first_received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    completion_reason: Mapped[str] = mapped_column(String(128), default="")
    purged_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)  # instances removed then
    # what the receiver committed, ever: raised with instance_count, never lowered (purging zeroes
    # instance_count, not these), so /metrics exports them as counters
    received_instances: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    received_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    slice_position: Mapped[float | None] = mapped_column(Float, nullable=True)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"), nullable=True, index=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    series: Mapped[Series] = relationship(back_populates="instances")


class Association(Base):
    """One inbound association; ``released`` tells the completion policy the sender is done."""

    __tablename__ = "associations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    peer_address: Mapped[str] = mapped_column(String(64), default="")
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    released: Mapped[bool] = mapped_column(Boolean, default=False)  # False while open or when aborted


class AuditResult(str, enum.Enum):
    ACCEPTED = "accepted"  # association accepted
    REJECTED = "rejected"  # A-ASSOCIATE-RQ answered with A-ASSOCIATE-RJ
    REFUSED = "refused"  # connection closed at connect, before anything was read
    DROPPED = "dropped"  # connection closed before it negotiated (timeout, not DICOM, room full)


class AssociationAudit(Base):
    """Who connected, and what the listener did about it: one row per association or refused connection."""

    __tablename__ = "association_audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")  # empty before an A-ASSOCIATE-RQ was read
    called_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_address: Mapped[str] = mapped_column(String(64))
    result: Mapped[AuditResult] = mapped_column(Enum(AuditResult, native_enum=False, length=16), index=True)
    reason: Mapped[str] = mapped_column(String(200), default="")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("dedup_key", name="uq_jobs_dedup_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(200))  # series + model + rule + instance count
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    rule_name: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32), default="")
    device: Mapped[str] = mapped_column(String(32), default="")
    instance_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[JobStatus] = mapped_column(Enum(JobStatus, native_enum=False, length=16),
                                              default=JobStatus.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str] = mapped_column(String(64), default="")
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    stage: Mapped[str] = mapped_column(String(32), default="")  # progress shown by `dicom-node jobs`
    error_class: Mapped[str] = mapped_column(String(128), default="")
    error_message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    timings: Mapped[str] = mapped_column(Text, default="")  # JSON: stage -> seconds
    # JSON of the routing.RoutedAction decided at completion: what the worker runs; empty on rows
    # written before the snapshots existed (those fail with a message saying so)
    action: Mapped[str] = mapped_column(Text, default="", server_default="")
    outputs_purged_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)  # folder removed then
    # why the series counted as complete, and whether only the quiet-period fallback said so
    completion_reason: Mapped[str] = mapped_column(String(128), default="", server_default="")
    completion_fallback: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    # the job of the same series and rule this one replaces, and the one that replaced it
    supersedes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    superseded_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # review before sending (dicom_node.review): held since, and the decision: who, when, which
    # (approved | rejected), the reason of a rejection, the structures kept (JSON list; empty: all)
    review_since: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    reviewed_by: Mapped[str] = mapped_column(String(64), default="", server_default="")
    reviewed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    review_decision: Mapped[str] = mapped_column(String(16), default="", server_default="")
    review_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    review_kept: Mapped[str] = mapped_column(Text, default="", server_default="")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="job", order_by="Delivery.id")


class Delivery(Base):
    """One output object to one destination; a SENT row is never sent again.

    A row without a job is a manual ``dicom-node send``. A worker sends a row only while it holds
    its lease (``lease_owner`` until ``lease_until``), taken with one conditional UPDATE.
    """

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("job_id", "destination", "sop_uid", name="uq_delivery"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True, nullable=True)
    destination: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # SEG | RTSTRUCT | SR | PREVIEW (a manual send: the Modality)
    sop_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[DeliveryStatus] = mapped_column(Enum(DeliveryStatus, native_enum=False, length=16),
                                                   default=DeliveryStatus.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # keyword of the transfer syntax the peer stored it in (SENT rows; '' before it was recorded)
    transfer_syntax: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # max_age_hours counts from here: when the row was made, or queued again by `dicom-node retry`
    queued_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    lease_owner: Mapped[str] = mapped_column(String(96), default="", server_default="")
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    job: Mapped[Job | None] = relationship(back_populates="deliveries")
