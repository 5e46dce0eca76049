"""jobs.action: the routed action decided at completion time

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00.000000

Rows enqueued before this revision get an empty action; the worker fails them with a message
saying to re-send the series (what their rule meant then is not known any more).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('action', sa.Text(), server_default='', nullable=False))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite >= 3.35 drops a column in place; the batch copy of the table would trip the
        # deliveries' foreign key on a populated index
        op.execute("ALTER TABLE jobs DROP COLUMN action")
    else:
        op.drop_column('jobs', 'action')
