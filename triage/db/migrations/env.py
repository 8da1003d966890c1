"""Alembic environment: runs on the connection that :func:`triage.db.migrate` passes in."""

from alembic import context

from triage.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the CLI path passes a connection
    raise RuntimeError("run migrations through triage.db.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
