"""The Approval module of an RT Structure Set (PS3.3 C.8.8.16): UNAPPROVED as written, APPROVED once reviewed.

A structure set the node writes says UNAPPROVED: automatic contours are a draft. One a reviewer
approved (``dicom_node.review``) says APPROVED with the ReviewDate and ReviewTime of the decision
(local time, like the other dates the node writes) and the ReviewerName, a PN made of the reviewer's
user name (Type 2C: required when APPROVED or REJECTED).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset

from dicom_node.errors import OutputError

PN_COMPONENT_MAX = 64  # a PN component group holds at most 64 characters


@dataclass(frozen=True)
class Approval:
    """Who approved the contours, and when (timezone-aware)."""

    reviewer: str
    at: datetime

    @property
    def reviewer_pn(self) -> str:
        """The reviewer as a PN: the name as the family name component (no ``^``, ``=`` or backslash in it)."""
        name = self.reviewer.strip()
        if not name or len(name) > PN_COMPONENT_MAX or any(c in name for c in "^=\\") or not name.isprintable():
            raise OutputError(f"reviewer {self.reviewer!r} cannot be written as a DICOM person name")
        return name


def set_approval(ds: Dataset, approval: Approval | None) -> None:
    """Write the Approval module: UNAPPROVED without ``approval``, else APPROVED with the review date,
    time and reviewer."""
    if approval is None:
        ds.ApprovalStatus = "UNAPPROVED"
        for keyword in ("ReviewDate", "ReviewTime", "ReviewerName"):
            if keyword in ds:
                delattr(ds, keyword)
        return
    local = approval.at.astimezone()
    ds.ApprovalStatus = "APPROVED"
    ds.ReviewDate = local.strftime("%Y%m%d")
    ds.ReviewTime = local.strftime("%H%M%S")
    ds.ReviewerName = approval.reviewer_pn
