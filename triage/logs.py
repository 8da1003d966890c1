"""structlog set-up: JSON lines by default, console rendering for people.

Patient name, patient ID, birth date and accession number never belong in a log line.
Call sites log UIDs and job IDs only; the ``_drop_phi`` processor is the second line of
defence, removing any such key that slips into an event.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

#: Event keys that would carry patient identity. They are removed, never rendered.
PHI_KEYS = frozenset(
    {
        "patient_name",
        "patient_id",
        "patient_birth_date",
        "birth_date",
        "accession_number",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "AccessionNumber",
    }
)


def _drop_phi(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in PHI_KEYS.intersection(event_dict):
        del event_dict[key]
    return event_dict


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    """Route structlog and the standard library's logging to stderr in one format.

    Parameters
    ----------
    fmt : {"json", "console"}
        JSON lines for log collectors, or coloured console output for people.
    level : str
        The lowest level written.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_phi,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom's, APScheduler's, Alembic's and highdicom's own output is noisy (highdicom
    # writes seven lines per report it builds) and pynetdicom's can echo dataset
    # contents; they are kept at WARNING whatever the daemon's level.
    for name in ("pynetdicom", "apscheduler", "alembic", "highdicom"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def get_logger(name: str, **bound: Any) -> Any:
    """Return a structlog logger, optionally with keys bound (for example ``job_id``)."""
    # A lazy proxy, not ``.bind()``: binding at import time would freeze structlog's
    # configuration as it was then, and a spawned receiver process imports every module
    # before it can call configure_logging (its lines came out in console format).
    return structlog.get_logger(name, **bound)
