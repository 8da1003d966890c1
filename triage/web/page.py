"""The worklist page: Jinja2 templates (autoescaped) and the static files they link.

Values come from DICOM headers that any modality can fill in, so every template is
autoescaped. As a second line of defence the page has no inline style or script: its
Content-Security-Policy lets only ``/static/worklist.css`` and ``/static/worklist.js``
apply (the files in ``static/``). The page works without JavaScript (a meta refresh
in ``<noscript>``); with it, the table is swapped in place and a banner says so when
the server stops answering, instead of the browser showing an error page.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from starlette.templating import Jinja2Templates

from triage.web.worklist import WorklistRow

FOOTER = "AI triage — not for diagnostic use"
#: The stylesheet and script, served at ``/static/``.
STATIC_DIR = Path(__file__).with_name("static")
_TEMPLATE_DIR = Path(__file__).with_name("templates")

_STATE_LABELS = {
    "receiving": "Receiving",
    "queued": "Queued",
    "analysing": "Analysing",
    "done": "Done",
    "undetermined": "Undetermined",
    "failed": "Failed",
    "skipped": "Skipped",
}


def _clock(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _ago(value: datetime, now: datetime) -> str:
    """How long ago ``value`` was, as a reader says it: "just now", "14 min ago"."""
    seconds = (now - value).total_seconds()
    if seconds < 60:
        return "just now"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min ago"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h {minutes % 60} min ago" if hours < 6 else f"{hours} h ago"
    return f"{hours // 24} days ago"


def _dicom_date(value: str | None) -> str:
    """A DICOM DA (``YYYYMMDD``) as ``YYYY-MM-DD``; anything else as sent."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


#: What each delivery state means, for the cell's explanation.
_DELIVERY_MEANINGS = {
    "sent": "the report reached every destination",
    "pending": "the report is queued to be sent",
    "retrying": "a destination did not take the report; it is tried again",
    "dead": "sending gave up; an admin resends with `triage retry`",
}

#: Why a row without deliveries has none, by its state.
_NO_DELIVERY_MEANINGS = {
    "receiving": "nothing to send: the series is still arriving",
    "queued": "nothing to send until the analysis ends",
    "analysing": "nothing to send until the analysis ends",
    "done": "no destination is configured",
    "undetermined": "no destination is configured",
    "failed": "nothing sent: the analysis failed",
    "skipped": "nothing to send: no series to analyse",
}


def _delivery_meaning(row: WorklistRow) -> str:
    if not row.delivery:
        return _NO_DELIVERY_MEANINGS.get(row.state, "nothing to send")
    return _DELIVERY_MEANINGS[_worst_delivery_state(row)]


def _worst_delivery_state(row: WorklistRow) -> str:
    """The state that colours a row's delivery summary: the worst of its deliveries."""
    return next(
        (s for s in ("dead", "retrying", "pending") if any(d.state == s for d in row.deliveries)),
        "sent",
    )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["clock"] = _clock
    env.filters["worst_delivery_state"] = _worst_delivery_state
    env.filters["delivery_meaning"] = _delivery_meaning
    env.filters["dicom_date"] = _dicom_date
    env.globals["ago"] = _ago
    return env


templates = Jinja2Templates(env=_environment())


def worklist_context(
    rows: list[WorklistRow],
    *,
    refresh_seconds: int,
    now: datetime,
    window_hours: float | None = None,
    identity: bool = False,
    viewer_url: str | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    """What ``worklist.html`` shows.

    Parameters
    ----------
    rows : list of WorklistRow
        Rows in reading order.
    refresh_seconds : int
        How often the page reloads its table.
    now : datetime
        The time the page shows as last updated (naive UTC).
    window_hours : float, optional
        The list holds the studies of this many past hours (the page says so); all
        studies when ``None``.
    identity : bool
        Whether the reader may see patient names and IDs.
    viewer_url : str, optional
        ``web.viewer_url``: a link per study to the hospital's viewer.
    user : str, optional
        Who the token gate let in (shown with a sign-out button); None without a gate.
    """
    return {
        "identity": identity,
        "user": user,
        "viewer_url": viewer_url,
        "rows": rows,
        "refresh_seconds": int(refresh_seconds),
        "now": now,
        "positives": sum(1 for r in rows if r.flagged),
        "pending": sum(1 for r in rows if r.state in ("receiving", "queued", "analysing")),
        "window": f" in the last {window_hours:g} hours" if window_hours is not None else "",
        "state_labels": _STATE_LABELS,
        "footer": FOOTER,
    }


def render_worklist(
    rows: list[WorklistRow],
    *,
    refresh_seconds: int,
    now: datetime,
    window_hours: float | None = None,
    identity: bool = False,
    viewer_url: str | None = None,
) -> str:
    """The whole worklist page as a string (the app answers with the same template)."""
    context = worklist_context(
        rows,
        refresh_seconds=refresh_seconds,
        now=now,
        window_hours=window_hours,
        identity=identity,
        viewer_url=viewer_url,
    )
    return templates.get_template("worklist.html").render(context)


def render_unauthorized() -> str:
    """The page a browser sees without a valid token: how to sign in, nothing else."""
    return templates.get_template("unauthorized.html").render()
