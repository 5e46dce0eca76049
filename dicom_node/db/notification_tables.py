"""Typed models of the notification outbox: an event as it was recorded, and each message it made.

An event row is written in the same transaction as the state it tells of (a job failed, a delivery went
dead, ...), so it is never lost and never recorded twice. The worker's notifier later turns it into one
message row per recipient (``fanned_out``), each sent, retried with back-off, and dead after a maximum
age, like a delivery. ``facts`` holds no patient name, ID or birth date.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, Enum, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dicom_node.db.tables import Base, UtcDateTime, utcnow


class MessageStatus(str, enum.Enum):
    PENDING = "pending"  # to be sent at next_attempt_at
    SENT = "sent"  # the webhook answered 2xx, or the SMTP server took the message
    DEAD = "dead"  # not sent within notifications.max_age_hours; last_error says why


class NotificationEvent(Base):
    __tablename__ = "notification_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)  # review_needed, job_failed, ...
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    # what the event is about ("job 12 to PACS", "disk"): repeats of the same within a quiet time are not recorded
    subject: Mapped[str] = mapped_column(String(200), default="")
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    rule_name: Mapped[str] = mapped_column(String(64), default="")
    facts: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the template fields of the event
    fanned_out: Mapped[bool] = mapped_column(Boolean, default=False, index=True)  # message rows made
    note: Mapped[str] = mapped_column(String(200), default="")  # e.g. why no message was made
    messages: Mapped[list[NotificationMessage]] = relationship(back_populates="event",
                                                               order_by="NotificationMessage.id")


class NotificationMessage(Base):
    __tablename__ = "notification_messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("notification_events.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16))  # webhook | email
    recipient: Mapped[str] = mapped_column(String(200))  # the webhook's name, or the e-mail address
    title: Mapped[str] = mapped_column(String(200), default="")  # the subject
    body: Mapped[str] = mapped_column(Text, default="")  # e-mail text, or the webhook's JSON (the signed bytes)
    status: Mapped[MessageStatus] = mapped_column(Enum(MessageStatus, native_enum=False, length=16),
                                                  default=MessageStatus.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    lease_owner: Mapped[str] = mapped_column(String(96), default="")
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    event: Mapped[NotificationEvent] = relationship(back_populates="messages")
