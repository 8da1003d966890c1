"""The durable queue: SQLAlchemy models, engine set-up and Alembic migrations."""

from triage.db.engine import create_db_engine, migrate, session_factory
from triage.db.models import (
    AuditEvent,
    Base,
    Decision,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    Study,
    WorkerHeartbeat,
)

__all__ = [
    "AuditEvent",
    "Base",
    "Decision",
    "Delivery",
    "DeliveryState",
    "Instance",
    "Job",
    "JobState",
    "Result",
    "Series",
    "SeriesState",
    "Study",
    "WorkerHeartbeat",
    "create_db_engine",
    "migrate",
    "session_factory",
]
