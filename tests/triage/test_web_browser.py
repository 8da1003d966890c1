"""The worklist in a real browser: Debian's Chromium, headless, driven by Playwright.

Playwright's own browser builds are not downloaded; the test uses ``/usr/bin/chromium``
(``apt-get install chromium``; ``.ci/run`` installs it). A missing browser fails the test:
a skip would hide a missing dependency in CI.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import playwright.sync_api as playwright_api
import pytest
from support import make_config, open_db
from test_web import EXPECTED_ORDER, populate

from triage.web import WebServer, start_web

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
TOKEN = "browser-test-token"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebServer]:
    sessions = open_db(f"sqlite:///{tmp_path / 'triage.db'}")
    populate(sessions)
    config = make_config(
        tmp_path, web={"port": 0, "token": TOKEN, "refresh_seconds": 1, "worklist_hours": None}
    )
    web = start_web(config, sessions)
    yield web
    web.stop()


def test_worklist_in_headless_chromium(server: WebServer) -> None:
    assert Path(CHROMIUM).exists(), "Chromium is missing: apt-get install chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            errors: list[str] = []
            # A Content-Security-Policy violation or a script error shows up here.
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            # Signing in with the token once leaves the address bar without it.
            page.goto(f"http://127.0.0.1:{server.port}/?token={TOKEN}")
            assert page.url == f"http://127.0.0.1:{server.port}/"

            rows = page.locator("tbody tr.study")
            assert rows.locator("td.acc").all_inner_texts() == EXPECTED_ORDER
            positives = page.locator("tr.positive")
            assert positives.count() == 3
            top = rows.nth(0)
            assert top.locator(".badge-pe").inner_text() == "PE suspected"
            assert top.locator(".badge-pe").is_visible()
            # The badge is red: a reader spots it without reading.
            colour = top.locator(".badge-pe").evaluate("e => getComputedStyle(e).backgroundColor")
            assert colour == "rgb(180, 35, 24)"
            assert "97%" in top.inner_text()
            assert rows.nth(3).locator(".badge-pe").count() == 0
            # The accession that looks like a script is shown as text, not run.
            assert page.get_by_text("<script>alert(1)</script>").count() == 1
            assert "AI triage — not for diagnostic use" in page.locator("footer").inner_text()

            # The table refreshes by itself (every second here) without a reload.
            first = page.locator("#updated").inner_text()
            page.wait_for_function(
                "t => document.getElementById('updated').innerText !== t", arg=first, timeout=5000
            )
            assert rows.locator("td.acc").all_inner_texts() == EXPECTED_ORDER
            assert errors == [], "\n".join(errors)

            page.screenshot(path=str(ARTIFACTS / "worklist.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "worklist.png").stat().st_size > 10_000
