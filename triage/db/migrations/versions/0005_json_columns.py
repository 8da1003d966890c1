"""results' slice_probabilities, flagged_sop_instance_uids and timings, and
audit_events.detail, as JSON instead of JSON text

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 01:40:00

PostgreSQL converts each existing value with ``::json`` (every row holds JSON text, as
the code wrote it with ``json.dumps``; a value that is not JSON stops the upgrade rather
than being lost). SQLite has no JSON storage type: SQLAlchemy's ``JSON`` keeps JSON text
there, which is what the rows already hold, so nothing is rewritten. (Recreating the
tables to change the declared type would copy the values with ``CAST(... AS JSON)``,
which SQLite reads as a cast to a number.)
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = (
    ("results", "slice_probabilities"),
    ("results", "flagged_sop_instance_uids"),
    ("results", "timings"),
    ("audit_events", "detail"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE JSON USING {column}::json")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE TEXT USING {column}::text")
