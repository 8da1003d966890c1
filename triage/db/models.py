"""SQLAlchemy 2.0 models for studies, series, instances and jobs.

Every state a study passes through is a row here, so a crash loses no progress.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from triage.decision import Decision


def utcnow() -> datetime:
    """Naive UTC now: SQLite keeps no time zone, so every timestamp is naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


class SeriesState(enum.StrEnum):
    """``receiving → complete → queued | skipped``; a new instance reopens a series."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    QUEUED = "queued"
    SKIPPED = "skipped"


class JobState(enum.StrEnum):
    """``queued → running → done | undetermined | failed``."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    UNDETERMINED = "undetermined"
    FAILED = "failed"


class Base(DeclarativeBase):
    """Declarative base of every table."""


def _enum(cls: type[enum.Enum], name: str) -> SAEnum:
    # Stored as plain strings (no native ENUM type), so a later release can add a state
    # with an ordinary migration on both SQLite and PostgreSQL.
    return SAEnum(
        cls,
        name=name,
        native_enum=False,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class Study(Base):
    """One DICOM study, known by its Study Instance UID."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    # Stored for the worklist only; never logged.
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(64))
    study_description: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    first_received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """One series of a study, with its completeness state."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_description: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[SeriesState] = mapped_column(
        _enum(SeriesState, "series_state"), default=SeriesState.RECEIVING, index=True
    )
    skip_reason: Mapped[str | None] = mapped_column(Text)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    # When the retention sweep deleted its images: its missing instances were let go, not lost.
    spool_released_at: Mapped[datetime | None] = mapped_column(DateTime)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")
    job: Mapped[Job | None] = relationship(back_populates="series", uselist=False)


class Instance(Base):
    """One received SOP instance and the header fields selection and the worker need."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    image_type: Mapped[str | None] = mapped_column(String(128))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    image_position_patient: Mapped[str | None] = mapped_column(String(128))
    image_orientation_patient: Mapped[str | None] = mapped_column(String(256))
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    pixel_spacing: Mapped[str | None] = mapped_column(String(64))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    file_path: Mapped[str] = mapped_column(String(255))
    file_size: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    missing: Mapped[bool] = mapped_column(Boolean, default=False)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """The analysis of one series by the model; one job per series, requeued on reopen."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), unique=True)
    state: Mapped[JobState] = mapped_column(
        _enum(JobState, "job_state"), default=JobState.QUEUED, index=True
    )
    reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    series: Mapped[Series] = relationship(back_populates="job")


class DeliveryState(enum.StrEnum):
    """``pending → sent | retrying(next_at) → dead(error)``."""

    PENDING = "pending"
    RETRYING = "retrying"
    SENT = "sent"
    DEAD = "dead"


class Result(Base):
    """The model's answer for one job: what it said, with which bundle and thresholds.

    A reopened series gets a new result; the old ones stay for the audit trail.
    """

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    decision: Mapped[Decision] = mapped_column(_enum(Decision, "decision"))
    stack_probability: Mapped[float | None] = mapped_column(Float)
    # {sop_instance_uid: probability}, and the flagged SOP Instance UIDs in order.
    slice_probabilities: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    flagged_sop_instance_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    threshold_stack: Mapped[float | None] = mapped_column(Float)
    threshold_slice: Mapped[float | None] = mapped_column(Float)
    threshold_source: Mapped[str | None] = mapped_column(String(64))
    bundle_name: Mapped[str | None] = mapped_column(String(128))
    bundle_version: Mapped[str | None] = mapped_column(String(64))
    bundle_sha256: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    # Seconds per stage: read, preprocess, cnn, sequence, total, report.
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # The output objects' UIDs, fixed once so every retry resends the same instances.
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    kos_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    deliveries: Mapped[list[Delivery]] = relationship(back_populates="result")


class Delivery(Base):
    """One (result, destination) pair on its way out, with its retry state in the row."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[DeliveryState] = mapped_column(
        _enum(DeliveryState, "delivery_state"), default=DeliveryState.PENDING, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    result: Mapped[Result] = relationship(back_populates="deliveries")


class AuditEvent(Base):
    """Something an admin changed or did: a threshold reload, a retry of dead deliveries."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Verdict(enum.StrEnum):
    """A radiologist's verdict on a result: the flag was right, or there is no PE."""

    CONFIRMED = "confirmed"
    REJECTED = "rejected"


class Feedback(Base):
    """A radiologist's verdict on one result, from the study view; the latest one counts.

    ``triage monitor`` reads ``result_id``, ``verdict`` and ``created_at`` for the
    positive predictive value per week.
    """

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), index=True)
    verdict: Mapped[Verdict] = mapped_column(_enum(Verdict, "verdict"))
    comment: Mapped[str | None] = mapped_column(Text)
    # The login or token name the verdict came with.
    who: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class WorkerHeartbeat(Base):
    """A live inference worker, as /healthz reports it; refreshed every heartbeat."""

    __tablename__ = "worker_heartbeats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(128), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    # What the model runs on, as the worker says it: "CPU" or "cuda:0 (NVIDIA H200)".
    device: Mapped[str | None] = mapped_column(String(128))
    # The Keras backend: tensorflow, jax or torch.
    backend: Mapped[str | None] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
