"""Typed models of the admin side of the index: users, sessions, API tokens, the audit log and the live config.

Secrets are never stored: passwords as argon2 hashes, session and API tokens as SHA-256 digests
(they are long random strings, so a fast digest is enough to make a stolen table useless).
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, Enum, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from dicom_node.db.tables import Base, UtcDateTime, utcnow


class Role(str, enum.Enum):
    ADMIN = "admin"  # everything
    PHYSICIST = "physicist"  # read with PHI, retry and cancel jobs
    VIEWER = "viewer"  # read, PHI masked


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class WebSession(Base):
    """A browser login: the cookie holds the token, the row its digest, the CSRF token and the expiry."""

    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))  # user name, or "-" for an unknown one
    action: Mapped[str] = mapped_column(String(32))  # login, login-failed, config-change, retry, cancel, ...
    target: Mapped[str] = mapped_column(String(200), default="")
    details: Mapped[str] = mapped_column(Text, default="")  # JSON: the diff of a change, the address of a login


class ConfigEntry(Base):
    """One destination, routing rule or template of the live config, as the JSON of its TOML table."""

    __tablename__ = "config_entries"
    __table_args__ = (UniqueConstraint("kind", "name", name="uq_config_entry"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # destination | rule | template
    name: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer)  # the order of rules (evaluated in order)
    body: Mapped[str] = mapped_column(Text)


class ConfigState(Base):
    """One row: the live config's version, raised by every change (the sweep reloads when it moves)."""

    __tablename__ = "config_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    seeded_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
