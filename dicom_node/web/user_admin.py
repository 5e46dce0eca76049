"""What an admin does to users from the browser or the API, as ``dicom-node users`` does it, each audited.

Add (with a password), change the role, disable or enable, reset the password (the user's sessions
end), create an API token (shown once; only its digest is kept) and revoke one. The last enabled
admin can be neither disabled nor demoted, so the node never locks its admins out. Passwords and
tokens never reach the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import audit, users
from dicom_node.db.admin_tables import Role
from dicom_node.db.users import UserError
from dicom_node.web.credentials import MIN_PASSWORD_LENGTH, hash_password, new_token, token_digest


@dataclass(frozen=True)
class Change:
    """What a user edit asks for; None leaves that part as it is."""

    role: Role | None = None
    disabled: bool | None = None
    password: str | None = None


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")


def _keeps_an_admin(session: Session, name: str, change: Change) -> None:
    user = users.existing_user(session, name)
    loses_admin = user.role == Role.ADMIN and not user.disabled and (
        (change.role is not None and change.role != Role.ADMIN) or change.disabled is True)
    if loses_admin and users.count_admins(session) <= 1:
        raise UserError(f"{name} is the last enabled admin: add another admin first")


def add(factory: sessionmaker[Session], actor: str, name: str, role: Role, password: str) -> None:
    _check_password(password)
    with factory.begin() as session:
        users.add_user(session, name, hash_password(password), role)
        audit.record(session, actor, "user-add", name, {"role": role.value})


def change(factory: sessionmaker[Session], actor: str, name: str, what: Change) -> list[str]:
    """Apply ``what`` to ``name``; the audit actions recorded (one per part changed)."""
    if what.password is not None:
        _check_password(what.password)
    done: list[str] = []
    with factory.begin() as session:
        _keeps_an_admin(session, name, what)
        user = users.existing_user(session, name)
        if what.role is not None and what.role != user.role:
            old = user.role.value
            users.set_role(session, name, what.role)
            audit.record(session, actor, "user-role", name, {"role": [old, what.role.value]})
            done.append("user-role")
        if what.disabled is not None and what.disabled != user.disabled:
            users.set_disabled(session, name, what.disabled)
            action = "user-disable" if what.disabled else "user-enable"
            audit.record(session, actor, action, name)
            done.append(action)
        if what.password is not None:
            users.set_password(session, name, hash_password(what.password))
            ended = users.end_sessions_of(session, name)
            audit.record(session, actor, "user-password", name, {"sessions_ended": ended})
            done.append("user-password")
    return done


def create_token(factory: sessionmaker[Session], actor: str, name: str) -> tuple[int, str]:
    """A new API token of ``name``: its id and the token itself (shown once)."""
    token = new_token()
    with factory.begin() as session:
        token_id = users.new_token_row(session, name, token_digest(token))
        audit.record(session, actor, "token-add", name, {"token_id": token_id})
    return token_id, token


def revoke_token(factory: sessionmaker[Session], actor: str, name: str, token_id: int) -> None:
    with factory.begin() as session:
        if not users.revoke_token(session, name, token_id):
            raise UserError(f"{name} has no API token {token_id}")
        audit.record(session, actor, "token-revoke", name, {"token_id": token_id})
