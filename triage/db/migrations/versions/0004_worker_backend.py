"""worker_heartbeats.backend, and a device column wide enough for a GPU's name

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 19:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("worker_heartbeats", schema=None) as batch_op:
        batch_op.add_column(sa.Column("backend", sa.String(length=16), nullable=True))
        batch_op.alter_column(
            "device", existing_type=sa.String(length=32), type_=sa.String(length=128)
        )


def downgrade() -> None:
    with op.batch_alter_table("worker_heartbeats", schema=None) as batch_op:
        batch_op.alter_column(
            "device", existing_type=sa.String(length=128), type_=sa.String(length=32)
        )
        batch_op.drop_column("backend")
