"""deliveries: a nullable job (manual sends), leases, the dead letter, and the time a delivery was queued

Revision ID: delivery
Revises: 0003
Create Date: 2026-12-08 09:00:00.000000

A manual ``dicom-node send`` is a delivery without a job. ``lease_owner``/``lease_until`` let one
worker at a time hold a delivery. ``queued_at`` is where a delivery's ``max_age_hours`` count from;
existing rows get their ``next_attempt_at``. Deliveries that gave up under ``max_attempts``
(``FAILED``) become ``DEAD``, the dead letter ``dicom-node retry`` queues again.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dicom_node.db.tables

revision = 'delivery'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.alter_column('job_id', existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column('queued_at', dicom_node.db.tables.UtcDateTime(), nullable=True))
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=96), server_default='', nullable=False))
        batch_op.add_column(sa.Column('lease_until', dicom_node.db.tables.UtcDateTime(), nullable=True))
    op.execute("UPDATE deliveries SET queued_at = next_attempt_at")
    op.execute("UPDATE deliveries SET status = 'DEAD' WHERE status = 'FAILED'")
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.alter_column('queued_at', existing_type=dicom_node.db.tables.UtcDateTime(), nullable=False)


def downgrade() -> None:
    op.execute("DELETE FROM deliveries WHERE job_id IS NULL")
    op.execute("UPDATE deliveries SET status = 'FAILED' WHERE status = 'DEAD'")
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('lease_until')
        batch_op.drop_column('lease_owner')
        batch_op.drop_column('queued_at')
        batch_op.alter_column('job_id', existing_type=sa.Integer(), nullable=False)
