"""Runs the web application on uvicorn in a background thread of ``triage serve``."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from triage.config import Config, WebTLSConfig
from triage.errors import TriageError
from triage.logs import get_logger
from triage.web.app import create_app

if TYPE_CHECKING:
    from triage.supervisor import Supervision

log = get_logger(__name__)


class WebError(TriageError):
    """The web server cannot start, usually because its address is taken."""


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket here, so a taken port is an error in the caller's thread.

    uvicorn binding it itself would call ``sys.exit`` inside the server thread, which
    ends only that thread and leaves the daemon running without its worklist.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise WebError(f"web.host {host!r} cannot be resolved: {err}") from err
    family, socktype, proto, _name, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise WebError(
            f"the web server cannot listen on {host} port {port}: {err.strerror}; "
            "choose another web.port or stop the program that uses it"
        ) from err
    sock.set_inheritable(True)
    return sock


def _check_tls_files(tls: WebTLSConfig) -> None:
    """Load the certificate and key here, so a bad file is an error with its reason in the
    caller's thread (uvicorn would fail inside its own thread)."""
    assert tls.certificate is not None and tls.private_key is not None  # checked by config
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.certificate, tls.private_key, tls.private_key_password)
    except (OSError, ssl.SSLError) as err:
        raise WebError(
            f"cannot load the web server's TLS certificate or key: {err}; "
            "check web.tls in the configuration"
        ) from err


class WebServer:
    """The worklist server, listening from construction until :meth:`stop`.

    Parameters
    ----------
    config : Config
        The daemon's configuration (section ``web``).
    sessions : sessionmaker
        The process's session factory.
    """

    def __init__(
        self,
        config: Config,
        sessions: sessionmaker[Session],
        worker_supervision: Callable[[], Supervision | None] | None = None,
    ) -> None:
        tls = config.web.tls
        if tls.enabled:
            _check_tls_files(tls)
        self._socket = _bind(config.web.host, config.web.port)
        self.host = config.web.host
        self.port: int = self._socket.getsockname()[1]
        self.scheme = "https" if tls.enabled else "http"
        server_config = uvicorn.Config(
            create_app(config, sessions, worker_supervision),
            # uvicorn wraps the socket in TLS with these (when enabled), so the token and
            # the worklist never cross the network in clear text.
            ssl_certfile=str(tls.certificate) if tls.enabled else None,
            ssl_keyfile=str(tls.private_key) if tls.enabled else None,
            ssl_keyfile_password=tls.private_key_password if tls.enabled else None,
            # No access log: a query string may carry the token, and a path is all it adds.
            access_log=False,
            # None keeps uvicorn's own loggers on the root handler that
            # configure_logging installed, so its lines come out as structlog JSON.
            log_config=None,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(server_config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="web", daemon=True
        )

    @property
    def url(self) -> str:
        """The worklist's address, as a browser on this host would open it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> WebServer:
        """Start serving and return once uvicorn accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            problem = None
            if not self._thread.is_alive():
                problem = "the web server stopped while starting; see the log above"
            elif time.monotonic() > deadline:
                problem = f"the web server did not start within {timeout} s"
            if problem:
                self.stop(timeout=1)
                raise WebError(problem)
            time.sleep(0.02)
        log.info("web_started", host=self.host, port=self.port, scheme=self.scheme)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the requests in flight (up to five seconds) and stop listening."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()
        log.info("web_stopped", port=self.port)


def start_web(
    config: Config,
    sessions: sessionmaker[Session],
    worker_supervision: Callable[[], Supervision | None] | None = None,
) -> WebServer:
    """Start the worklist server in a background thread.

    Parameters
    ----------
    config : Config
        ``web.host`` and ``web.port`` (0 picks a free port; see ``.port``).
    sessions : sessionmaker
        The process's session factory.
    worker_supervision : callable, optional
        What the daemon's worker supervisor knows, for ``/healthz``.

    Returns
    -------
    WebServer
        Running; call ``.stop()`` at shutdown.

    Raises
    ------
    WebError
        When the address cannot be bound or the server does not come up.
    """
    return WebServer(config, sessions, worker_supervision).start()
