"""notifications: the outbox of notifications (events, and one message per recipient)

Revision ID: notifications
Revises: review
Create Date: 2026-12-09 10:00:00.000000

New tables only; nothing existing changes.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dicom_node.db.tables

revision = 'notifications'
down_revision = 'review'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('notification_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('at', dicom_node.db.tables.UtcDateTime(), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('rule_name', sa.String(length=64), nullable=False),
    sa.Column('facts', sa.Text(), nullable=False),
    sa.Column('fanned_out', sa.Boolean(), nullable=False),
    sa.Column('note', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('notification_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notification_events_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_notification_events_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_notification_events_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_notification_events_fanned_out'), ['fanned_out'], unique=False)
    op.create_table('notification_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('recipient', sa.String(length=200), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('status', sa.Enum('PENDING', 'SENT', 'DEAD', name='messagestatus', native_enum=False, length=16),
              nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('queued_at', dicom_node.db.tables.UtcDateTime(), nullable=False),
    sa.Column('next_attempt_at', dicom_node.db.tables.UtcDateTime(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('sent_at', dicom_node.db.tables.UtcDateTime(), nullable=True),
    sa.Column('lease_owner', sa.String(length=96), nullable=False),
    sa.Column('lease_until', dicom_node.db.tables.UtcDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['event_id'], ['notification_events.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('notification_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notification_messages_event_id'), ['event_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_notification_messages_status'), ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('notification_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notification_messages_status'))
        batch_op.drop_index(batch_op.f('ix_notification_messages_event_id'))
    op.drop_table('notification_messages')
    with op.batch_alter_table('notification_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notification_events_fanned_out'))
        batch_op.drop_index(batch_op.f('ix_notification_events_job_id'))
        batch_op.drop_index(batch_op.f('ix_notification_events_at'))
        batch_op.drop_index(batch_op.f('ix_notification_events_kind'))
    op.drop_table('notification_events')
