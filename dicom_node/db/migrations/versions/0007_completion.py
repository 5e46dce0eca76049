"""jobs: why the series counted as complete, and which job supersedes which

Revision ID: completion
Revises: association_audit
Create Date: 2026-12-08 09:00:00.000000

Existing jobs get an empty completion reason, no fallback flag and no supersession links. The new
job state SUPERSEDED is a value of the (non-native) job status enum: no schema change.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'completion'
down_revision = 'association_audit'
branch_labels = None
depends_on = None

_COLUMNS = ('superseded_by', 'supersedes', 'completion_fallback', 'completion_reason')


def upgrade() -> None:
    # plain ADD COLUMNs: on SQLite a batch copy of the table would trip the deliveries' foreign key
    op.add_column('jobs', sa.Column('completion_reason', sa.String(length=128), server_default='', nullable=False))
    op.add_column('jobs', sa.Column('completion_fallback', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column('jobs', sa.Column('supersedes', sa.Integer(), nullable=True))
    op.add_column('jobs', sa.Column('superseded_by', sa.Integer(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite >= 3.35 drops a column in place; a batch copy of the table would trip the foreign keys
        for column in _COLUMNS:
            op.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    else:
        for column in _COLUMNS:
            op.drop_column('jobs', column)
