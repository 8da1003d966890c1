"""The token gate in front of every endpoint except ``/healthz``.

With ``web.token`` set, a request needs ``Authorization: Bearer <token>`` or the
session cookie. A browser gets the cookie by opening ``/?token=<token>`` once; it is
then redirected to ``/`` so the token does not stay in the address bar, the history or
a bookmark. The cookie holds its expiry time and an HMAC of it keyed with the token, not
the token itself. It expires after ``web.session_hours``: the browser drops it then, and
the server refuses it after that time even if a copy is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from triage.logs import get_logger
from triage.web.page import render_unauthorized

log = get_logger(__name__)

COOKIE_NAME = "triage_session"

#: Paths anyone may read: a load balancer's health probe carries no token.
OPEN_PATHS = frozenset({"/healthz"})


def cookie_value(token: str, expires_at: int) -> str:
    """The session cookie's value: its expiry (Unix seconds) and an HMAC of it keyed with
    ``token``, so the cookie is not the token and its expiry cannot be moved."""
    mac = hmac.new(token.encode(), f"triage-web-session:{expires_at}".encode(), hashlib.sha256)
    return f"{expires_at}.{mac.hexdigest()}"


def cookie_is_valid(token: str, value: str, now: float) -> bool:
    """Whether ``value`` is a cookie that :func:`cookie_value` made and that has not expired."""
    expires, _, _mac = value.partition(".")
    if not expires.isdigit():
        return False
    return _equal(value, cookie_value(token, int(expires))) and now < int(expires)


def _equal(given: str, expected: str) -> bool:
    # Constant-time, so the response time says nothing about how much of a guess matched.
    return hmac.compare_digest(given.encode(), expected.encode())


class TokenGate:
    """ASGI middleware that refuses requests without the token (401).

    Parameters
    ----------
    app : ASGIApp
        The application behind the gate.
    token : str
        The configured ``web.token``.
    session_seconds : float
        How long a session cookie is valid (``web.session_hours``).
    """

    def __init__(self, app: ASGIApp, token: str, session_seconds: float) -> None:
        self._app = app
        self._token = token
        self._session_seconds = session_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an authorised request on; answer any other one here."""
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        response = self._check(scope)
        if response is None:
            await self._app(scope, receive, send)
        else:
            await response(scope, receive, send)

    def _check(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _equal(credentials.strip(), self._token):
            return None
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except CookieError:
            # A malformed Cookie header is treated as no cookie, not as a server error.
            cookies = SimpleCookie()
        session = cookies.get(COOKIE_NAME)
        now = time.time()
        if session is not None and cookie_is_valid(self._token, session.value, now):
            return None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if scope["path"] == "/" and "token" in query and _equal(query["token"][0], self._token):
            redirect = RedirectResponse("/", status_code=303)
            redirect.set_cookie(
                COOKIE_NAME,
                cookie_value(self._token, int(now + self._session_seconds)),
                max_age=int(self._session_seconds),
                httponly=True,
                samesite="strict",
                secure=scope.get("scheme") == "https",
            )
            log.info("web_session_started")
            return redirect
        log.info("web_unauthorised", path=scope["path"])
        if scope["path"] == "/":
            return HTMLResponse(
                render_unauthorized(), status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return PlainTextResponse(
            "a valid bearer token is required\n",
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
