"""The three state machines, one module each: :mod:`.series`, :mod:`.job`, :mod:`.delivery`.

Each transition is one function that runs one conditional ``UPDATE`` (the same SQL on
SQLite and PostgreSQL) and says whether it happened. Nothing outside these modules
writes a ``state`` column; a row's first state is its column default.
"""

from sqlalchemy import Result


def changed(result: Result[object]) -> bool:
    """Whether an ``UPDATE``'s conditions matched a row, i.e. the transition happened."""
    return bool(result.rowcount)  # type: ignore[attr-defined]
