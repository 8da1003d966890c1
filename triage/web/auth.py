"""The token gate in front of every endpoint except ``/healthz``.

With ``web.token`` or ``web.users`` set, a request needs ``Authorization: Bearer
<token>`` (any configured token) or the session cookie. Each token belongs to a user:
its ``web.users`` name, or ``web.token`` for the shared token; the gate puts that name
in the request's scope (:func:`authenticated_user`), so feedback records who gave it.

A browser gets the cookie by opening ``/?token=<token>`` once; it is then redirected to
``/`` so the token does not stay in the address bar, the history or a bookmark. The
cookie holds its expiry time, the user's name and an HMAC of both keyed with that user's
token, not the token itself: neither the expiry nor the name can be changed without the
named user's token. It expires after ``web.session_hours``: the browser drops it then,
and the server refuses it after that time even if a copy is kept. The pages' sign-out
button (``POST /signout``) deletes the browser's cookie; sessions are kept nowhere on the
server, so a copy of the cookie taken before stays valid until it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any
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

#: The scope key under which the gate leaves the authenticated user's name.
USER_SCOPE_KEY = "triage.user"

#: Where the pages' sign-out button posts: the gate answers it, as it owns the cookie.
SIGNOUT_PATH = "/signout"


def cookie_value(user: str, token: str, expires_at: int) -> str:
    """The session cookie's value: its expiry (Unix seconds), an HMAC keyed with the
    user's ``token`` of the expiry and the user's name, and the name; so the cookie is not
    the token, and neither its expiry nor its user can be changed."""
    message = f"triage-web-session:{expires_at}:{user}".encode()
    mac = hmac.new(token.encode(), message, hashlib.sha256)
    return f"{expires_at}.{mac.hexdigest()}.{user}"


def cookie_user(tokens: Mapping[str, str], value: str, now: float) -> str | None:
    """The user named by ``value`` if it is a cookie that :func:`cookie_value` made with
    that user's token in ``tokens`` (user name -> token) and has not expired, else None."""
    expires, _, rest = value.partition(".")
    _mac, _, user = rest.partition(".")
    token = tokens.get(user)
    if not (expires.isascii() and expires.isdigit()) or token is None:
        return None
    if _equal(value, cookie_value(user, token, int(expires))) and now < int(expires):
        return user
    return None


def token_user(tokens: Mapping[str, str], given: str) -> str | None:
    """The user whose token ``given`` is, or None. Every token is compared, each in
    constant time, so the response time does not say which one came closest."""
    found = None
    for user, token in tokens.items():
        if _equal(given, token):
            found = user
    return found


def authenticated_user(scope: Scope) -> str | None:
    """The name of the user the gate let this request through for; None without a gate."""
    user = scope.get(USER_SCOPE_KEY)
    return user if isinstance(user, str) else None


def _equal(given: str, expected: str) -> bool:
    # Constant-time, so the response time says nothing about how much of a guess matched.
    return hmac.compare_digest(given.encode(), expected.encode())


class TokenGate:
    """ASGI middleware that refuses requests without a configured token (401), and names
    the user of every request it lets through (:func:`authenticated_user`).

    Parameters
    ----------
    app : ASGIApp
        The application behind the gate.
    tokens : Mapping[str, str]
        User name -> token: ``web.users`` and the shared ``web.token`` (see
        :attr:`triage.config.WebConfig.tokens`).
    session_seconds : float
        How long a session cookie is valid (``web.session_hours``).
    """

    def __init__(self, app: ASGIApp, tokens: Mapping[str, str], session_seconds: float) -> None:
        if not tokens:
            raise ValueError("the token gate needs at least one token")
        self._app = app
        self._tokens = dict(tokens)
        self._session_seconds = session_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an authorised request on; answer any other one here."""
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        checked = self._check(scope)
        if isinstance(checked, str) and scope["path"] == SIGNOUT_PATH:
            await self._sign_out(scope, checked)(scope, receive, send)
        elif isinstance(checked, str):
            await self._app({**scope, USER_SCOPE_KEY: checked}, receive, send)
        else:
            await checked(scope, receive, send)

    def _check(self, scope: Scope) -> str | Response:
        """The request's user, or the answer to a request without a valid token."""
        headers = Headers(scope=scope)
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            user = token_user(self._tokens, credentials.strip())
            if user is not None:
                return user
        now = time.time()
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if scope["path"] == "/" and "token" in query:
            user = token_user(self._tokens, query["token"][0])
            if user is not None:
                # A new session even over a valid one: on a shared workstation the next
                # radiologist signs in as themselves, and their verdicts carry their name.
                return self._new_session(scope, user, now)
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except CookieError:
            # A malformed Cookie header is treated as no cookie, not as a server error.
            cookies = SimpleCookie()
        session = cookies.get(COOKIE_NAME)
        if session is not None:
            user = cookie_user(self._tokens, session.value, now)
            if user is not None:
                return user
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

    def _sign_out(self, scope: Scope, user: str) -> Response:
        """The answer to the sign-out button: the session cookie deleted, back to ``/``
        (which then asks for a token). Only a POST: a link or a prefetch must not sign out."""
        if scope["method"] != "POST":
            return PlainTextResponse(
                "sign out with a POST\n", status_code=405, headers={"Allow": "POST"}
            )
        redirect = RedirectResponse("/", status_code=303)
        redirect.delete_cookie(COOKIE_NAME, **_cookie_attributes(scope))
        log.info("web_session_ended", user=user)
        return redirect

    def _new_session(self, scope: Scope, user: str, now: float) -> Response:
        """A redirect to ``/`` that sets ``user``'s session cookie."""
        redirect = RedirectResponse("/", status_code=303)
        redirect.set_cookie(
            COOKIE_NAME,
            cookie_value(user, self._tokens[user], int(now + self._session_seconds)),
            max_age=int(self._session_seconds),
            **_cookie_attributes(scope),
        )
        # The name, never the token.
        log.info("web_session_started", user=user)
        return redirect


def _cookie_attributes(scope: Scope) -> dict[str, Any]:
    """The session cookie's attributes: a browser deletes a cookie only when they match
    those it was set with. Strict SameSite keeps it off cross-site requests (the CSRF
    defence of the sign-out and feedback POSTs); Secure wherever the page came over TLS."""
    return {"httponly": True, "samesite": "strict", "secure": scope.get("scheme") == "https"}
