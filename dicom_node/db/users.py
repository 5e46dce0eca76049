"""The only SQL for users, login sessions and API tokens. Hashing is the caller's (``dicom_node.web.credentials``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_node.db.admin_tables import ApiToken, Role, User, WebSession
from dicom_node.db.index import updated_rows
from dicom_node.db.tables import utcnow
from dicom_node.errors import DicomNodeError


class UserError(DicomNodeError):
    """A user cannot be added, found or changed (the message says which and why)."""


def add_user(session: Session, name: str, password_hash: str, role: Role) -> User:
    user = User(name=name, password_hash=password_hash, role=role, disabled=False)
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError as exc:
        raise UserError(f"user {name!r} exists already") from exc
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def user_named(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def user_by_id(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def existing_user(session: Session, name: str) -> User:
    user = user_named(session, name)
    if user is None:
        raise UserError(f"no user {name!r}")
    return user


def set_disabled(session: Session, name: str, disabled: bool) -> None:
    """Disable (or enable) a user; a disabled user's sessions and tokens stop working at once."""
    user = existing_user(session, name)
    session.execute(update(User).where(User.id == user.id).values(disabled=disabled))
    if disabled:
        session.execute(delete(WebSession).where(WebSession.user_id == user.id))


def set_password(session: Session, name: str, password_hash: str) -> None:
    user = existing_user(session, name)
    session.execute(update(User).where(User.id == user.id).values(password_hash=password_hash))


def count_admins(session: Session) -> int:
    return len(list(session.scalars(select(User.id).where(User.role == Role.ADMIN, User.disabled.is_(False)))))


def add_session(session: Session, user_id: int, token_hash: str, csrf_token: str, expires_at: datetime) -> None:
    session.execute(delete(WebSession).where(WebSession.expires_at < utcnow()))  # expired ones go on each login
    session.add(WebSession(user_id=user_id, token_hash=token_hash, csrf_token=csrf_token, expires_at=expires_at))


def session_user(session: Session, token_hash: str) -> tuple[User, str] | None:
    """The enabled user of a live session and its CSRF token, else None."""
    row = session.execute(select(User, WebSession.csrf_token).join(WebSession, WebSession.user_id == User.id)
                          .where(WebSession.token_hash == token_hash, WebSession.expires_at > utcnow(),
                                 User.disabled.is_(False))).first()
    return None if row is None else (row[0], row[1])


def end_session(session: Session, token_hash: str) -> int:
    return updated_rows(session.execute(delete(WebSession).where(WebSession.token_hash == token_hash)))


def add_token(session: Session, user_id: int, token_hash: str) -> None:
    session.add(ApiToken(user_id=user_id, token_hash=token_hash))


def token_user(session: Session, token_hash: str) -> User | None:
    """The enabled user an API token belongs to (its last use recorded), else None."""
    row = session.execute(select(User, ApiToken.id).join(ApiToken, ApiToken.user_id == User.id)
                          .where(ApiToken.token_hash == token_hash, User.disabled.is_(False))).first()
    if row is None:
        return None
    session.execute(update(ApiToken).where(ApiToken.id == row[1]).values(last_used_at=utcnow()))
    return row[0]


def token_counts(session: Session) -> dict[int, int]:
    counts: dict[int, int] = {}
    for user_id in session.scalars(select(ApiToken.user_id)):
        counts[user_id] = counts.get(user_id, 0) + 1
    return counts


def set_role(session: Session, name: str, role: Role) -> None:
    """A user's new role; it applies to their next request (sessions read the role each time)."""
    user = existing_user(session, name)
    session.execute(update(User).where(User.id == user.id).values(role=role))


def end_sessions_of(session: Session, name: str) -> int:
    """Log a user out everywhere (after a password reset)."""
    user = existing_user(session, name)
    return updated_rows(session.execute(delete(WebSession).where(WebSession.user_id == user.id)))


def tokens_of(session: Session, name: str) -> list[ApiToken]:
    """A user's API tokens (digests only), oldest first."""
    user = existing_user(session, name)
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)))


def new_token_row(session: Session, name: str, token_hash: str) -> int:
    """Add an API token for ``name``; its row id (what a revoke names)."""
    row = ApiToken(user_id=existing_user(session, name).id, token_hash=token_hash)
    session.add(row)
    session.flush()
    return row.id


def revoke_token(session: Session, name: str, token_id: int) -> bool:
    """Delete one of ``name``'s API tokens; False when the user has no token of that id."""
    user = existing_user(session, name)
    return updated_rows(session.execute(
        delete(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user.id))) == 1
