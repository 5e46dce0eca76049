"""users, api_tokens, web_sessions, audit_log, config_entries, config_state: the web admin

Revision ID: web
Revises: 0003
Create Date: 2026-12-07 08:40:00.000000

New tables only; the live config (config_entries) is seeded from the TOML by the first process that
finds config_state empty.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dicom_node.db.tables

revision = 'web'
down_revision = 'delivery'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('users',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('name', sa.String(length=64), nullable=False),
                    sa.Column('password_hash', sa.String(length=256), nullable=False),
                    sa.Column('role', sa.Enum('ADMIN', 'PHYSICIST', 'VIEWER', name='role', native_enum=False,
                                              length=16), nullable=False),
                    sa.Column('disabled', sa.Boolean(), nullable=False),
                    sa.Column('created_at', dicom_node.db.tables.UtcDateTime(), nullable=False),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('name'))
    op.create_table('api_tokens',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('user_id', sa.Integer(), nullable=False),
                    sa.Column('token_hash', sa.String(length=64), nullable=False),
                    sa.Column('created_at', dicom_node.db.tables.UtcDateTime(), nullable=False),
                    sa.Column('last_used_at', dicom_node.db.tables.UtcDateTime(), nullable=True),
                    sa.ForeignKeyConstraint(['user_id'], ['users.id']),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('token_hash'))
    op.create_index('ix_api_tokens_user_id', 'api_tokens', ['user_id'])
    op.create_table('web_sessions',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('token_hash', sa.String(length=64), nullable=False),
                    sa.Column('user_id', sa.Integer(), nullable=False),
                    sa.Column('csrf_token', sa.String(length=64), nullable=False),
                    sa.Column('created_at', dicom_node.db.tables.UtcDateTime(), nullable=False),
                    sa.Column('expires_at', dicom_node.db.tables.UtcDateTime(), nullable=False),
                    sa.ForeignKeyConstraint(['user_id'], ['users.id']),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('token_hash'))
    op.create_index('ix_web_sessions_user_id', 'web_sessions', ['user_id'])
    op.create_table('audit_log',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('at', dicom_node.db.tables.UtcDateTime(), nullable=False),
                    sa.Column('actor', sa.String(length=64), nullable=False),
                    sa.Column('action', sa.String(length=32), nullable=False),
                    sa.Column('target', sa.String(length=200), nullable=False),
                    sa.Column('details', sa.Text(), nullable=False),
                    sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_audit_log_at', 'audit_log', ['at'])
    op.create_table('config_entries',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('kind', sa.String(length=16), nullable=False),
                    sa.Column('name', sa.String(length=64), nullable=False),
                    sa.Column('position', sa.Integer(), nullable=False),
                    sa.Column('body', sa.Text(), nullable=False),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('kind', 'name', name='uq_config_entry'))
    op.create_table('config_state',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('version', sa.Integer(), nullable=False),
                    sa.Column('seeded_at', dicom_node.db.tables.UtcDateTime(), nullable=False),
                    sa.PrimaryKeyConstraint('id'))


def downgrade() -> None:
    for table in ('config_state', 'config_entries', 'audit_log', 'web_sessions', 'api_tokens', 'users'):
        op.drop_table(table)
