"""Patient data a role may not see is masked on the server, before a page or an API answer is made."""

from __future__ import annotations

from dicom_node.db.admin_tables import Role

MASK = "***"
# header elements that identify the patient: shown only to roles that may see PHI
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs",
                "ReferringPhysicianName")


def sees_phi(role: Role) -> bool:
    return role in (Role.ADMIN, Role.PHYSICIST)


def masked(value: str, role: Role) -> str:
    return value if sees_phi(role) else (MASK if value else "")
