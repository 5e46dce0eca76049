"""seg_transfer_syntax: deliveries.transfer_syntax, the transfer syntax a sent object was stored in at the peer

Revision ID: seg_transfer_syntax
Revises: review
Create Date: 2026-12-07 14:30:00.000000

Rows sent before it was recorded keep ''.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'seg_transfer_syntax'
down_revision = 'notifications'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('transfer_syntax', sa.String(length=64), nullable=False, server_default=''))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite >= 3.35 drops a column in place; a batch copy of the table would trip the foreign keys
        op.execute("ALTER TABLE deliveries DROP COLUMN transfer_syntax")
    else:
        op.drop_column('deliveries', 'transfer_syntax')
