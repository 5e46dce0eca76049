"""The review API's requests and answers (``/api/review``), as pydantic models: the OpenAPI schema describes these."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from dicom_node.db.admin_tables import Role
from dicom_node.review.decisions import REASON_MAX, Decision
from dicom_node.review.queue import QueueEntry
from dicom_node.web.phi import masked
from dicom_node.web.schemas import DeliveryOut


class ReviewStructureOut(BaseModel):
    name: str = Field(description="catalogue name: what approve's keep takes")
    roi_name: str = Field(description="the name in the SEG and RTSTRUCT (the template's rename)")
    volume_ml: float
    voxels: int
    colour: tuple[int, int, int] = Field(description="catalogue colour, RGB 0-255")
    rt_type: str


class ReviewItemOut(BaseModel):
    job_id: int
    series_id: int
    status: str = Field(description="review while waiting; delivering, done, rejected or superseded after")
    rule_name: str
    model_id: str
    model_version: str
    review_since: datetime | None
    waited_seconds: int
    reviewers: list[str]
    outputs: list[str]
    destinations: list[str]
    structures: list[ReviewStructureOut]
    problem: str = Field(description="why the structures cannot be listed, else empty")
    series_uid: str
    series_description: str
    study_date: str
    patient_id: str = Field(description="masked (***) for viewers")
    accession_number: str = Field(description="masked (***) for viewers")
    decision: str = Field(description="empty while waiting; approved or rejected")
    reviewed_by: str
    reviewed_at: datetime | None
    reason: str = Field(description="why it was rejected")
    kept: list[str] | None = Field(description="the structures an approval kept; null: all")

    @classmethod
    def of(cls, entry: QueueEntry, role: Role) -> ReviewItemOut:
        values = {**entry.__dict__, "structures": [ReviewStructureOut(**s.__dict__) for s in entry.structures],
                  "reviewers": list(entry.reviewers), "outputs": list(entry.outputs),
                  "destinations": list(entry.destinations), "kept": None if entry.kept is None else list(entry.kept),
                  "patient_id": masked(entry.patient_id, role),
                  "accession_number": masked(entry.accession_number, role)}
        return cls(**values)


class ReviewDetailOut(ReviewItemOut):
    deliveries: list[DeliveryOut] = Field(description="what the approval sends, and how far it got")


class ApproveIn(BaseModel):
    keep: list[str] | None = Field(default=None, description="catalogue names of the structures to send; null: all")


class RejectIn(BaseModel):
    reason: str = Field(min_length=1, max_length=REASON_MAX, description="why: recorded on the job and audited")


class ReviewDecisionOut(BaseModel):
    ok: bool
    job_id: int
    decision: str
    status: str
    kept: list[str] | None
    deliveries: int
    message: str

    @classmethod
    def of(cls, decision: Decision) -> ReviewDecisionOut:
        return cls(ok=True, **decision.__dict__)
