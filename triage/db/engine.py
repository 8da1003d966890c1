"""One SQLAlchemy engine per process, for SQLite (embedded) or PostgreSQL (scale-out)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from triage.errors import DatabaseError

_MIGRATIONS = Path(__file__).parent / "migrations"


def _prepare_sqlite_file(path: Path) -> None:
    # Create the file ourselves with mode 0600: the database holds patient IDs and
    # accession numbers, and SQLite would otherwise create it with the umask's mode.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def create_db_engine(url: str, busy_timeout_ms: int = 30000) -> Engine:
    """Create the process's engine.

    SQLite gets WAL mode (readers never block the receiver), a busy timeout, foreign
    keys and ``synchronous=NORMAL``. NORMAL may lose the last commits on power loss but
    never corrupts; the spool files are fsynced before their rows, and start-up
    reconciliation indexes any file whose row was lost.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _prepare_sqlite_file(Path(parsed.database))
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except (SQLAlchemyError, ImportError, ValueError) as err:
        raise DatabaseError(f"cannot use database URL {parsed!r}: {err}") from err

    if parsed.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """The sessionmaker bound to this process's engine."""
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema with Alembic, so a running site can be upgraded."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except SQLAlchemyError as err:
        raise DatabaseError(
            f"cannot create or upgrade the database schema at {engine.url!r}: {err}"
        ) from err
