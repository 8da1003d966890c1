"""The durable queue: SQLAlchemy models, engine set-up and Alembic migrations."""

from triage.db.engine import create_db_engine, migrate, session_factory
from triage.db.models import Base, Instance, Job, JobState, Series, SeriesState, Study

__all__ = [
    "Base",
    "Instance",
    "Job",
    "JobState",
    "Series",
    "SeriesState",
    "Study",
    "create_db_engine",
    "migrate",
    "session_factory",
]
