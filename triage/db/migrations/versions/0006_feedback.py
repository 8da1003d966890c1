"""feedback: a radiologist's verdict on a result (confirmed or rejected), with who and
when; studies.patient_name and studies.study_description, for the worklist

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 02:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_name", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("study_description", sa.String(length=64), nullable=True))
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column(
            "verdict",
            sa.Enum("confirmed", "rejected", name="verdict", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("who", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_result_id"), ["result_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_result_id"))
    op.drop_table("feedback")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("study_description")
        batch_op.drop_column("patient_name")
