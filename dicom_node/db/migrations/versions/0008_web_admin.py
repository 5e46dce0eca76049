"""web_admin: studies.accession_number (series search) and the series' received counters (/metrics)

Revision ID: web_admin
Revises: completion
Create Date: 2026-12-08 10:00:00.000000

``series.received_instances`` and ``series.received_bytes`` count what the receiver committed and are
never lowered (housekeeping sets ``instance_count`` to 0 when it purges a series, these stay), so
/metrics can export them as counters. Existing rows start from what the index still holds.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'web_admin'
down_revision = 'completion'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('accession_number', sa.String(length=16), nullable=False, server_default=''))
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('received_instances', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('received_bytes', sa.BigInteger(), nullable=False, server_default='0'))
    op.execute("UPDATE series SET received_instances = instance_count, received_bytes = COALESCE("
               "(SELECT SUM(instances.size_bytes) FROM instances WHERE instances.series_id = series.id), 0)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite >= 3.35 drops a column in place; a batch copy of the tables would trip the foreign keys
        op.execute("ALTER TABLE series DROP COLUMN received_bytes")
        op.execute("ALTER TABLE series DROP COLUMN received_instances")
        op.execute("ALTER TABLE studies DROP COLUMN accession_number")
    else:
        op.drop_column('series', 'received_bytes')
        op.drop_column('series', 'received_instances')
        op.drop_column('studies', 'accession_number')
