"""The web application: the worklist page, its JSON, ``/healthz`` and ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triage.config import Config
from triage.db.models import Study, utcnow
from triage.logs import get_logger
from triage.web.auth import TokenGate, authenticated_user
from triage.web.feedback import (
    CSRF_COOKIE,
    CSRF_FIELD,
    FeedbackError,
    csrf_cookie,
    csrf_matches,
    latest_feedback,
    new_csrf_token,
    parse_form,
    record_feedback,
    study_result,
)
from triage.web.health import check_health
from triage.web.metrics import metrics_registry, render_metrics
from triage.web.page import FOOTER, STATIC_DIR, templates, worklist_context
from triage.web.study import curve_svg, key_image_path, study_view
from triage.web.worklist import WorklistRow, worklist_rows

if TYPE_CHECKING:
    from triage.supervisor import Supervision

log = get_logger(__name__)

# The worklist holds accession numbers: no cache may keep a copy, no page may frame it.
_PRIVATE = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# Only the page's own stylesheet and script apply: markup smuggled in through a DICOM
# header that escaping somehow missed could neither run nor restyle the page.
# Forms may post only to this server: the study view's verdict and the sign-out button.
_CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class NoFraming:
    """ASGI middleware that forbids framing of every response (401 pages included), for
    browsers that predate CSP's frame-ancestors: no page of ours can be clickjacked."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add ``X-Frame-Options: DENY`` to its response."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_denying_frames(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Frame-Options"] = "DENY"
            await send(message)

        await self._app(scope, receive, send_denying_frames)


class _Revalidated(StaticFiles):
    """The static files, revalidated on every load (``no-cache`` with their ETag), so
    that an upgrade's new stylesheet and script apply at once."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        """The file, as :class:`StaticFiles` answers it, marked ``no-cache``."""
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def worker_alive_seconds(config: Config) -> float:
    """How old a worker's heartbeat may be before it counts as dead: three missed beats."""
    return 3 * config.worker.heartbeat_seconds


def create_app(
    config: Config,
    sessions: sessionmaker[Session],
    worker_supervision: Callable[[], Supervision | None] | None = None,
) -> Starlette:
    """Build the ASGI application.

    Parameters
    ----------
    config : Config
        The daemon's configuration; ``web`` and ``worker.heartbeat_seconds`` are used.
    sessions : sessionmaker
        The process's session factory.
    worker_supervision : callable, optional
        Returns what the daemon's worker supervisor knows (None while it runs none), for
        ``/healthz``.

    Returns
    -------
    Starlette
        Routes ``/``, ``/api/worklist``, ``/healthz`` and ``/metrics``; with
        ``web.token`` or ``web.users`` set, all but ``/healthz`` need a token (see
        :mod:`triage.web.auth`).
    """
    refresh = config.web.refresh_seconds
    alive = worker_alive_seconds(config)
    registry = metrics_registry(sessions, alive)

    window = config.web.worklist_hours
    # Patient name and ID: with tokens (web.token or web.users) every reader past the gate
    # is authenticated; without one (loopback only) they show only when the site says so.
    identity = config.web.authenticated or config.web.show_patient_identity

    def listed_rows() -> list[WorklistRow]:
        since = utcnow() - timedelta(hours=window) if window is not None else None
        return worklist_rows(sessions, since)

    def worklist_page(request: Request) -> Response:
        context = worklist_context(
            listed_rows(),
            refresh_seconds=refresh,
            now=utcnow(),
            window_hours=window,
            identity=identity,
            viewer_url=config.web.viewer_url,
            user=authenticated_user(request.scope),
        )
        return templates.TemplateResponse(
            request,
            "worklist.html",
            context,
            headers={**_PRIVATE, "Content-Security-Policy": _CSP},
        )

    def worklist_json(_request: Request) -> Response:
        rows = listed_rows()
        return JSONResponse(
            {
                "generated_at": utcnow().isoformat(timespec="seconds") + "Z",
                "rows": [r.to_json(identity) for r in rows],
            },
            headers=_PRIVATE,
        )

    def healthz(_request: Request) -> Response:
        supervision = worker_supervision() if worker_supervision is not None else None
        health = check_health(sessions, alive, supervision)
        return JSONResponse(
            health.body, status_code=health.status_code, headers={"Cache-Control": "no-store"}
        )

    def metrics(_request: Request) -> Response:
        # Counts taken at scrape time: a cached copy would be a wrong answer.
        return Response(
            render_metrics(registry),
            media_type=CONTENT_TYPE_LATEST,
            headers={"Cache-Control": "no-store"},
        )

    def who(request: Request) -> str:
        # The gate names the user of every request it lets through: the web.users name of
        # its token, or "web.token" for the shared one. Without tokens there is no gate
        # and the page is open on loopback only, so the verdict is the loopback user's.
        return authenticated_user(request.scope) or "loopback (no token)"

    def study_page(request: Request) -> Response:
        uid = request.path_params["uid"]
        with sessions() as session:
            study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).first()
            if study is None:
                return PlainTextResponse("no such study\n", status_code=404, headers=_PRIVATE)
            result = study_result(session, uid)
            view = study_view(session, config.data_dir, study, result)
            feedback = latest_feedback(session, [result.id]) if result is not None else {}
            token = csrf_cookie(request.headers.get("cookie", "")) or new_csrf_token()
            response = templates.TemplateResponse(
                request,
                "study.html",
                {
                    "view": view,
                    "identity": identity,
                    "user": authenticated_user(request.scope),
                    "curve": curve_svg(view.curve),
                    "feedback": feedback.get(result.id) if result is not None else None,
                    "csrf_field": CSRF_FIELD,
                    "csrf_token": token,
                    "error": request.query_params.get("error"),
                    "footer": FOOTER,
                },
                headers={**_PRIVATE, "Content-Security-Policy": _CSP},
            )
        response.set_cookie(
            CSRF_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/study",
        )
        return response

    async def study_feedback(request: Request) -> Response:
        uid = request.path_params["uid"]
        try:
            form = parse_form(await request.body())
        except FeedbackError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400, headers=_PRIVATE)
        if not csrf_matches(csrf_cookie(request.headers.get("cookie", "")), form.get(CSRF_FIELD)):
            log.warning("web_feedback_csrf_refused")
            return PlainTextResponse(
                "the form's CSRF token does not match this browser's; reload the study "
                "view and send it again\n",
                status_code=403,
                headers=_PRIVATE,
            )
        user = who(request)
        try:
            result_id = record_feedback(
                sessions, uid, form.get("verdict", ""), form.get("comment"), user
            )
        except FeedbackError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400, headers=_PRIVATE)
        log.info(
            "web_feedback_recorded", result_id=result_id, verdict=form.get("verdict"), who=user
        )
        return RedirectResponse(f"/study/{uid}", status_code=303, headers=_PRIVATE)

    def key_image(request: Request) -> Response:
        uid, name = request.path_params["uid"], request.path_params["name"]
        with sessions() as session:
            result = study_result(session, uid)
        path = key_image_path(config.data_dir, result.id, name) if result is not None else None
        if path is None:
            return PlainTextResponse("no such image\n", status_code=404, headers=_PRIVATE)
        return FileResponse(path, media_type="image/png", headers=_PRIVATE)

    def database_error(_request: Request, exc: Exception) -> Response:
        # Only the first line: driver messages can carry the failing statement's values.
        log.warning("web_database_error", error=str(exc).splitlines()[0] if str(exc) else "")
        return PlainTextResponse(
            "the database is not answering; try again shortly\n",
            status_code=503,
            headers={"Cache-Control": "no-store", "Retry-After": str(refresh)},
        )

    middleware = [Middleware(NoFraming)]
    if config.web.authenticated:
        session_seconds = config.web.session_hours * 3600
        middleware.append(
            Middleware(TokenGate, tokens=config.web.tokens, session_seconds=session_seconds)
        )
    return Starlette(
        routes=[
            Route("/", worklist_page),
            Mount("/static", _Revalidated(directory=STATIC_DIR), name="static"),
            Route("/api/worklist", worklist_json),
            Route("/study/{uid}", study_page),
            Route("/study/{uid}/feedback", study_feedback, methods=["POST"]),
            Route("/study/{uid}/key-images/{name}", key_image),
            Route("/healthz", healthz),
            Route("/metrics", metrics),
        ],
        middleware=middleware,
        exception_handlers={SQLAlchemyError: database_error},
    )
