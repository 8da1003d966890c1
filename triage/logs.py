"""structlog set-up: JSON lines by default, console rendering for people.

Patient name, patient ID, birth date and accession number never belong in a log line.
Call sites log UIDs and job IDs only; the ``_drop_phi`` processor is the second line of
defence, removing any such key that slips into an event. Libraries quote header values
in their own messages and warnings, so those are logged by category and place without
their text, and errors by class and place (:func:`describe_error`) without their message.
"""

from __future__ import annotations

import logging
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, TextIO

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


#: Libraries whose own messages quote header values ("The string "DOE JOHN Q" is
#: unlikely to represent..."). Their lines keep the logger, level and place, not the text.
VALUE_QUOTING_LOGGERS = ("pydicom", "highdicom", "py.warnings")

_OWN_PACKAGES = tuple(
    str(Path(__file__).resolve().parent.parent / name) for name in ("triage", "model")
)


def _redact_library_text(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    record = event_dict.get("_record")
    if event_dict.get("_from_structlog", True) or record is None:
        return event_dict
    if record.name.split(".")[0] in VALUE_QUOTING_LOGGERS:
        event_dict["event"] = "library_message"
        event_dict["origin"] = f"{record.module}:{record.lineno}"
        event_dict.pop("exc_info", None)
    return event_dict


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` for the daemon: one log line, not raw text on stderr.

    Our own warnings keep their text. A library's is left out: pydicom and highdicom
    quote the header value they warn about, and a log never holds patient data.
    """
    path = str(Path(filename).resolve())
    own = path.startswith(_OWN_PACKAGES)
    where = Path(filename)
    fields: dict[str, Any] = {
        "category": category.__name__,
        "origin": f"{where.parent.name}/{where.name}:{lineno}",
    }
    if own:
        fields["text"] = str(message)
    structlog.get_logger("warnings").warning("warning" if own else "library_warning", **fields)


def describe_error(err: BaseException) -> str:
    """An exception as its class and the place it was raised, without its message.

    For error texts that are logged, stored or shown: a library's message quotes the
    value it refused (``Unable to convert '1932-02-15' to 'DA' object``), and that
    value may be a patient's birth date or name.
    """
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return type(err).__name__
    last = Path(frames[-1].filename)
    return f"{type(err).__name__} in {last.parent.name}/{last.name}:{frames[-1].lineno}"


def error_frames(err: BaseException) -> list[str]:
    """The traceback of ``err`` (and its causes) as places only, innermost last."""
    out: list[str] = []
    seen: BaseException | None = err
    while seen is not None:
        out[:0] = [
            f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} {f.name}"
            for f in traceback.extract_tb(seen.__traceback__)
        ] + ([f"raised {type(seen).__name__}"] if seen is not err else [])
        seen = seen.__cause__ or seen.__context__
    return out


def describe_db_error(err: BaseException) -> str:
    """A database error as its class and the kind of statement, never its parameters.

    SQLAlchemy's message repeats the statement's bound parameters, which include the
    patient ID and accession number of the instance being recorded.
    """
    statement = getattr(err, "statement", None)
    kind = str(statement).split(None, 1)[0].upper() if statement else "statement"
    orig = getattr(err, "orig", None)
    # The driver's error code says what happened (SQLITE_BUSY, SQLSTATE 55P03) without
    # the message, which can quote a value.
    code = getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None)
    cause = f" ({type(orig).__name__}{f' {code}' if code else ''})" if orig is not None else ""
    return f"{type(err).__name__}{cause} during {kind}"


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
        _redact_library_text,
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
    # pydicom sends each warning both to its logger and to the warnings module; the
    # warning is the one logged (once), so its logger keeps only errors.
    logging.getLogger("pydicom").setLevel(max(logging.ERROR, logging.getLevelName(level)))
    # Warnings go through structlog too, so every line on stderr is one JSON object.
    warnings.showwarning = _log_warning


def get_logger(name: str, **bound: Any) -> Any:
    """Return a structlog logger, optionally with keys bound (for example ``job_id``)."""
    # A lazy proxy, not ``.bind()``: binding at import time would freeze structlog's
    # configuration as it was then, and a spawned receiver process imports every module
    # before it can call configure_logging (its lines came out in console format).
    return structlog.get_logger(name, **bound)
