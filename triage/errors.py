"""The exceptions whose messages a user (an admin, an operator) reads.

Each message says what was wrong and what to do about it.
"""

from __future__ import annotations


class TriageError(Exception):
    """Base class for errors reported to users of the daemon and its CLI."""


class ConfigError(TriageError):
    """The configuration file is missing, unreadable or invalid.

    ``problems`` holds one ``(key_path, reason)`` pair per error so that the CLI can
    print each on its own line.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = [f"{path}: {reason}" for path, reason in problems]
        super().__init__("invalid configuration:\n  " + "\n  ".join(lines))


class InvalidUIDError(TriageError, ValueError):
    """A UID does not follow the DICOM UID grammar and must not become part of a path."""


class DatabaseError(TriageError):
    """The database cannot be reached or its schema is not what this version expects."""


class AlreadyRunningError(TriageError):
    """Another daemon holds the data folder's lock."""
