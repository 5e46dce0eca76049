"""series.purged_at and jobs.outputs_purged_at: what housekeeping removed, and when

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 05:40:00.000000

Both are empty on existing rows: nothing was removed before housekeeping existed. A purged series
also gets the state PURGED, a new value of the (non-native) series state enum: no schema change.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dicom_node.db.tables

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('purged_at', dicom_node.db.tables.UtcDateTime(), nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('outputs_purged_at', dicom_node.db.tables.UtcDateTime(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite >= 3.35 drops a column in place; a batch copy of the tables would trip the foreign keys
        op.execute("ALTER TABLE jobs DROP COLUMN outputs_purged_at")
        op.execute("ALTER TABLE series DROP COLUMN purged_at")
    else:
        op.drop_column('jobs', 'outputs_purged_at')
        op.drop_column('series', 'purged_at')
