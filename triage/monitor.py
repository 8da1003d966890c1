"""``triage monitor``: how often a flag is confirmed, per ISO week, for AI governance.

The positive predictive value of the flags is the share of reviewed flags that the
radiologist confirmed as pulmonary embolism. Each week gets the number of flags, the
confirmed and rejected counts, the flags not reviewed yet, and the PPV with its Wilson
score interval with continuity correction (:func:`model.stats.wilson_ci`, the interval
the model's evaluation reports). A drop in PPV after a scanner or protocol change is what
post-deployment monitoring is for.

:func:`weekly_ppv` is a pure function over :class:`FlagRecord` rows. :func:`read_records`
takes them from the database: from the ``feedback`` table, once the daemon records
feedback, joined to the results; without that table there is no feedback to report.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Engine, MetaData, Table, inspect, select

from model.stats import Interval, wilson_ci
from triage.errors import DatabaseError

Verdict = Literal["confirmed", "rejected"]
VERDICTS: tuple[Verdict, ...] = ("confirmed", "rejected")

FEEDBACK_TABLE = "feedback"
"""The table :func:`read_records` reads: ``result_id`` (-> ``results.id``), ``verdict``
(``confirmed`` or ``rejected``) and ``created_at``; the latest row per result counts."""


@dataclass(frozen=True)
class FlagRecord:
    """One analysed study as monitoring sees it.

    Parameters
    ----------
    flag_time : datetime.datetime
        When the result was made; naive values are UTC, as the database keeps them.
    flagged : bool
        Whether the study was flagged positive.
    verdict : {"confirmed", "rejected"} or None
        The radiologist's feedback, or None while there is none.
    """

    flag_time: dt.datetime
    flagged: bool
    verdict: Verdict | None = None

    def __post_init__(self) -> None:
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ValueError(
                f"verdict must be one of {', '.join(VERDICTS)} or None, not {self.verdict!r}"
            )


@dataclass(frozen=True)
class WeekSummary:
    """The flags of one ISO week (or of the whole period) and their PPV.

    ``ppv`` is confirmed / (confirmed + rejected): flags not reviewed yet are left out
    rather than counted either way. ``confirmed_unflagged`` counts studies the model did
    not flag that a radiologist confirmed: misses seen in passing, not a sensitivity.
    """

    week: str
    start: dt.date | None
    flags: int
    confirmed: int
    rejected: int
    unreviewed: int
    confirmed_unflagged: int
    ppv: Interval = field(compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping; an undefined PPV (nothing reviewed) is null."""
        return {
            "week": self.week,
            "start": self.start.isoformat() if self.start else None,
            "flags": self.flags,
            "confirmed": self.confirmed,
            "rejected": self.rejected,
            "unreviewed": self.unreviewed,
            "confirmed_unflagged": self.confirmed_unflagged,
            "ppv": self.ppv.to_dict(),
        }


def _utc_date(moment: dt.datetime) -> dt.date:
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.date()


def _summary(
    week: str, start: dt.date | None, records: Sequence[FlagRecord], confidence: float
) -> WeekSummary:
    flagged = [r for r in records if r.flagged]
    confirmed = sum(r.verdict == "confirmed" for r in flagged)
    rejected = sum(r.verdict == "rejected" for r in flagged)
    return WeekSummary(
        week=week,
        start=start,
        flags=len(flagged),
        confirmed=confirmed,
        rejected=rejected,
        unreviewed=sum(r.verdict is None for r in flagged),
        confirmed_unflagged=sum(not r.flagged and r.verdict == "confirmed" for r in records),
        ppv=wilson_ci(confirmed, confirmed + rejected, confidence),
    )


def weekly_ppv(
    records: Iterable[FlagRecord], since: dt.date | None = None, confidence: float = 0.95
) -> tuple[list[WeekSummary], WeekSummary]:
    """Summarise flags and verdicts per ISO week (Monday to Sunday, UTC), and overall.

    Parameters
    ----------
    records : iterable of FlagRecord
        Every analysed study, or at least every flagged or reviewed one.
    since : datetime.date, optional
        Leave out records made before this day.
    confidence : float
        Of the Wilson intervals.

    Returns
    -------
    weeks : list of WeekSummary
        One per ISO week with a record, oldest first (weeks without any are left out).
    total : WeekSummary
        The whole period (``week`` is ``"total"``).
    """
    kept = [r for r in records if since is None or _utc_date(r.flag_time) >= since]
    by_week: dict[tuple[int, int], list[FlagRecord]] = {}
    for record in kept:
        year, week, _ = _utc_date(record.flag_time).isocalendar()
        by_week.setdefault((year, week), []).append(record)
    weeks = [
        _summary(f"{year}-W{week:02d}", dt.date.fromisocalendar(year, week, 1), rows, confidence)
        for (year, week), rows in sorted(by_week.items())
    ]
    return weeks, _summary("total", None, kept, confidence)


def read_records(engine: Engine) -> list[FlagRecord] | None:
    """Every result with its latest verdict, or None when there is no feedback table.

    Raises
    ------
    DatabaseError
        The feedback table lacks a column it needs, or holds a verdict that is neither
        ``confirmed`` nor ``rejected``.
    """
    if not inspect(engine).has_table(FEEDBACK_TABLE):
        return None
    metadata = MetaData()
    feedback = Table(FEEDBACK_TABLE, metadata, autoload_with=engine)
    results = Table("results", metadata, autoload_with=engine)
    missing = {"result_id", "verdict", "created_at"} - set(feedback.c.keys())
    if missing:
        raise DatabaseError(
            f"the {FEEDBACK_TABLE} table has no {', '.join(sorted(missing))} column; "
            "run `triage migrate` with this version"
        )
    latest: dict[int, tuple[dt.datetime, str]] = {}
    with engine.connect() as connection:
        rows = connection.execute(
            select(feedback.c.result_id, feedback.c.verdict, feedback.c.created_at)
        )
        for result_id, verdict, created_at in rows:
            if result_id not in latest or created_at >= latest[result_id][0]:
                latest[result_id] = (created_at, verdict)
        results_rows = connection.execute(
            select(results.c.id, results.c.decision, results.c.created_at)
        ).all()
    records = []
    for result_id, decision, created_at in results_rows:
        verdict = latest.get(result_id, (None, None))[1]
        if verdict is not None and verdict not in VERDICTS:
            raise DatabaseError(
                f"feedback on result {result_id} has the verdict {verdict!r}; "
                f"expected one of {', '.join(VERDICTS)}"
            )
        flagged = str(decision).lower() == "present"
        if flagged or verdict is not None:
            records.append(FlagRecord(created_at, flagged, verdict))
    return records


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"


def format_weeks(weeks: Sequence[WeekSummary], total: WeekSummary, confidence: float) -> str:
    """A plain-text table, one line per week and one for the whole period."""
    level = f"{100 * confidence:g}% CI"
    lines = [
        f"{'week':<10} {'from':<10} {'flags':>5} {'confirmed':>9} {'rejected':>8} "
        f"{'unreviewed':>10} {'PPV':>7}  {level}"
    ]
    for row in [*weeks, total]:
        start = row.start.isoformat() if row.start else ""
        ci = (
            "-"
            if math.isnan(row.ppv.estimate)
            else f"{_percent(row.ppv.low)} to {_percent(row.ppv.high)}"
        )
        lines.append(
            f"{row.week:<10} {start:<10} {row.flags:>5} {row.confirmed:>9} {row.rejected:>8} "
            f"{row.unreviewed:>10} {_percent(row.ppv.estimate):>7}  {ci}"
        )
    if total.confirmed_unflagged:
        count = total.confirmed_unflagged
        lines.append(
            f"{count} unflagged {'study was' if count == 1 else 'studies were'} confirmed as "
            "PE by feedback (misses seen in passing, not in the PPV)."
        )
    return "\n".join(lines)
