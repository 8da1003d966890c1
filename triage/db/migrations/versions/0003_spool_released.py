"""series.spool_released_at: when retention deleted a series' images

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 04:45:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spool_released_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_column("spool_released_at")
