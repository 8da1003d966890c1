"""A radiologist's verdict on a flag, posted from the study view, and its CSRF guard.

The form is protected by a double-submit token: the study view sets a random token in a
``SameSite=Strict`` cookie and puts the same value in the form; a POST is accepted only
when the two match. Another site can make a browser send the cookie's request, but it
can neither read the cookie nor guess the value, so it cannot fill in the field.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from triage.db.models import AuditEvent, Decision, Feedback, Result, Series, Study, Verdict, utcnow
from triage.errors import TriageError

CSRF_COOKIE = "triage_csrf"
CSRF_FIELD = "csrf_token"
#: A form holds a verdict, a token and a short comment; anything longer is refused.
MAX_FORM_BYTES = 16_384
MAX_COMMENT_CHARS = 2_000
AUDIT_KIND = "feedback"


class FeedbackError(TriageError):
    """A feedback form that cannot be recorded: the message says why, for the user."""


def new_csrf_token() -> str:
    """A fresh random CSRF token for a browser's cookie and its forms."""
    return secrets.token_urlsafe(32)


def csrf_cookie(cookie_header: str) -> str | None:
    """The CSRF token in a ``Cookie`` header, or None (a malformed header counts as none)."""
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(cookie_header)
    except CookieError:
        return None
    morsel = cookies.get(CSRF_COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


def csrf_matches(cookie: str | None, field: str | None) -> bool:
    """Whether the form's token is the cookie's (compared in constant time)."""
    if not cookie or not field:
        return False
    return hmac.compare_digest(cookie.encode(), field.encode())


def parse_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict of first values.

    Raises
    ------
    FeedbackError
        The body is larger than :data:`MAX_FORM_BYTES` or not UTF-8.
    """
    if len(body) > MAX_FORM_BYTES:
        raise FeedbackError("the form is too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FeedbackError("the form is not UTF-8") from exc
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def study_result(session: Session, study_instance_uid: str) -> Result | None:
    """The result that speaks for a study, as the worklist picks it.

    Each series' newest result counts; of those a positive wins (the most probable),
    then the newest. None when the study is unknown or has no result yet.
    """
    latest = (
        select(func.max(Result.id))
        .join(Series, Series.id == Result.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(Study.study_instance_uid == study_instance_uid)
        .group_by(Result.series_id)
        .scalar_subquery()
    )
    results = list(session.scalars(select(Result).where(Result.id.in_(latest))))
    if not results:
        return None
    return min(
        results,
        key=lambda r: (
            r.decision != Decision.PRESENT,
            -(r.stack_probability or 0.0),
            -r.id,
        ),
    )


@dataclass(frozen=True)
class FeedbackView:
    """The latest verdict on a result, as the worklist and the study view show it."""

    verdict: str
    who: str
    created_at: datetime
    comment: str | None


def latest_feedback(session: Session, result_ids: list[int]) -> dict[int, FeedbackView]:
    """The newest verdict on each of ``result_ids`` that has one."""
    if not result_ids:
        return {}
    newest = (
        select(func.max(Feedback.id))
        .where(Feedback.result_id.in_(result_ids))
        .group_by(Feedback.result_id)
        .scalar_subquery()
    )
    return {
        f.result_id: FeedbackView(f.verdict.value, f.who, f.created_at, f.comment)
        for f in session.scalars(select(Feedback).where(Feedback.id.in_(newest)))
    }


def record_feedback(
    sessions: sessionmaker[Session],
    study_instance_uid: str,
    verdict: str,
    comment: str | None,
    who: str,
) -> int:
    """Record a verdict on the study's result, and the same as an audit event.

    Returns
    -------
    int
        The result's id.

    Raises
    ------
    FeedbackError
        The verdict is not ``confirmed`` or ``rejected``, the comment is too long, or the
        study has no result to give feedback on.
    """
    if verdict not in {v.value for v in Verdict}:
        raise FeedbackError("the verdict must be 'confirmed' or 'rejected'")
    comment = (comment or "").strip() or None
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise FeedbackError(f"the comment is longer than {MAX_COMMENT_CHARS} characters")
    now = utcnow()
    with sessions() as session, session.begin():
        result = study_result(session, study_instance_uid)
        if result is None:
            raise FeedbackError("this study has no result to confirm or reject")
        session.add(
            Feedback(
                result_id=result.id,
                verdict=Verdict(verdict),
                comment=comment,
                who=who,
                created_at=now,
            )
        )
        session.add(
            AuditEvent(
                kind=AUDIT_KIND,
                detail={
                    "result_id": result.id,
                    "verdict": verdict,
                    "who": who,
                    "comment": comment,
                },
                created_at=now,
            )
        )
        return result.id
