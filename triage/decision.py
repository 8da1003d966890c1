"""What a result says about pulmonary embolism: one vocabulary for the database, the
reports and the web pages."""

from __future__ import annotations

import enum


class Decision(enum.StrEnum):
    """The study-level call. ``UNDETERMINED``: the model could not give one (a series
    too short, say); the result says why."""

    PRESENT = "present"
    ABSENT = "absent"
    UNDETERMINED = "undetermined"
