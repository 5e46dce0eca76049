"""association_audit: every accepted and rejected association and every refused connection

Revision ID: association_audit
Revises: web
Create Date: 2026-12-08 09:00:00.000000

A new table only; nothing existing changes.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dicom_node.db.tables

revision = 'association_audit'
down_revision = 'web'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('association_audit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', dicom_node.db.tables.UtcDateTime(), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('called_ae', sa.String(length=16), nullable=False),
    sa.Column('peer_address', sa.String(length=64), nullable=False),
    sa.Column('result', sa.Enum('ACCEPTED', 'REJECTED', 'REFUSED', 'DROPPED', name='auditresult',
                                native_enum=False, length=16), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('association_audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_association_audit_result'), ['result'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('association_audit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_association_audit_result'))
    op.drop_table('association_audit')
