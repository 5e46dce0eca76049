"""review: jobs held for a person's decision (review_since) and the decision (who, when, which, why, kept)

Revision ID: review
Revises: web_admin
Create Date: 2026-12-15 10:00:00.000000

The job states ``review`` and ``rejected`` need no change of the schema: the status column is a
string (a non-native enum of 16 characters) without a constraint on its values.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'review'
down_revision = 'web_admin'
branch_labels = None
depends_on = None

COLUMNS = ("review_kept", "review_reason", "review_decision", "reviewed_at", "reviewed_by", "review_since")


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('review_since', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('reviewed_by', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('reviewed_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('review_decision', sa.String(length=16), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('review_reason', sa.Text(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('review_kept', sa.Text(), nullable=False, server_default=''))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite >= 3.35 drops a column in place; a batch copy of the table would trip the foreign keys
        for column in COLUMNS:
            op.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    else:
        for column in COLUMNS:
            op.drop_column('jobs', column)
