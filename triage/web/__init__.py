"""The radiologists' worklist, its JSON API, ``/healthz`` and ``/metrics``."""

from triage.web.app import create_app
from triage.web.server import WebError, WebServer, start_web
from triage.web.worklist import WorklistRow, worklist_rows

__all__ = ["WebError", "WebServer", "WorklistRow", "create_app", "start_web", "worklist_rows"]
