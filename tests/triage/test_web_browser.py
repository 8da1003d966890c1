"""The worklist in a real browser: Debian's Chromium, headless, driven by Playwright.

Playwright's own browser builds are not downloaded; the test uses ``/usr/bin/chromium``
(``apt-get install chromium``; ``.ci/run`` installs it). A missing browser fails the test:
a skip would hide a missing dependency in CI.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import playwright.sync_api as playwright_api
import pytest
from sqlalchemy import select
from support import make_config, open_db
from test_web import EXPECTED_ORDER, Outcome, add_study, populate

from triage.config import Config
from triage.db.models import Decision, Instance, JobState, Result, SeriesState, utcnow
from triage.storage.outbox import outbox_dir
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


def _key_image_pngs(folder: Path, slices: int = 3) -> list[dict[str, object]]:
    """Key slice PNGs and their entries as the worker writes them: a window image, a
    lung-window image and an RGBA heat map; drawn here (a chest-like disc and a hot
    spot), not by a model."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True)
    entries: list[dict[str, object]] = []
    for k in range(slices):
        for name, lungs in ((f"k{k}.png", 40), (f"k{k}_lung.png", 10)):
            image = Image.new("L", (256, 256), 0)
            draw = ImageDraw.Draw(image)
            draw.ellipse((20, 50, 236, 220), fill=150)
            draw.ellipse((45, 75, 120, 195), fill=lungs)
            draw.ellipse((136, 75, 211, 195), fill=lungs)
            image.save(folder / name)
        heat = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
        ImageDraw.Draw(heat).ellipse((150 + 5 * k, 110, 190 + 5 * k, 150), fill=(255, 40, 0, 200))
        heat.save(folder / f"k{k}_overlay.png")
        entries.append(
            {
                "pe_window": f"k{k}.png",
                "lung_window": f"k{k}_lung.png",
                "heatmap": f"k{k}_overlay.png",
                "sop_instance_uid": f"1.2.3.{k}",
                "instance_number": 20 + k,
                "position_mm": -120.0 + 2.5 * (20 + k),
                "probability": 0.95 - 0.05 * k,
            }
        )
    return entries


@pytest.fixture
def study_server(tmp_path: Path) -> Iterator[tuple[WebServer, str, Config]]:
    config = make_config(
        tmp_path, web={"port": 0, "token": TOKEN, "refresh_seconds": 60, "worklist_hours": None}
    )
    sessions = open_db(config)
    with sessions.begin() as session:
        study = add_study(
            session,
            "ACC-VIEW",
            utcnow() - timedelta(minutes=14),
            Outcome(SeriesState.QUEUED, JobState.DONE, Decision.PRESENT, 0.93, 3, instances=40),
        )
        study.patient_name = "BROWSER^PATIENT"
        study.study_description = "CT PULMONARY ANGIOGRAM"
        result = session.scalars(select(Result)).one()
        instances = session.scalars(
            select(Instance).where(Instance.series_id == result.series_id)
        ).all()
        probabilities = {}
        for i, instance in enumerate(instances):
            instance.image_position_patient = f"0\\0\\{-120 + 2.5 * i}"
            probabilities[instance.sop_instance_uid] = 0.9 if 19 <= i <= 23 else 0.05
        result.slice_probabilities = probabilities
        result.threshold_slice = 0.5
        session.flush()
        uid, result_id = study.study_instance_uid, result.id
    folder = outbox_dir(config.data_dir, result_id) / "key_images"
    entries = _key_image_pngs(folder)
    (folder / "key_images.json").write_text(json.dumps({"images": entries}))
    web = start_web(config, sessions)
    yield web, uid, config
    web.stop()


def test_study_view_and_feedback_in_headless_chromium(
    study_server: tuple[WebServer, str, Config],
) -> None:
    server, uid, config = study_server
    assert Path(CHROMIUM).exists(), "Chromium is missing: apt-get install chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    base = f"http://127.0.0.1:{server.port}"
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/?token={TOKEN}")
            row = page.locator(f'tr[data-study="{uid}"]')
            # Authenticated (web.token): the identity is shown.
            assert "BROWSER^PATIENT" in row.locator("td.patient").inner_text()
            assert "14 min ago" in row.inner_text()
            assert "not reviewed" in row.inner_text()

            row.locator("a.open").click()
            page.wait_for_url(f"{base}/study/{uid}")
            assert page.locator("svg#curve polyline.line").count() == 1
            assert page.locator("svg#curve #threshold").count() == 1
            images = page.locator(".key-image img")
            assert images.count() == 6  # three slices, each with its heat map
            page.wait_for_function(
                "() => [...document.querySelectorAll('.key-image img')]"
                ".every(i => i.complete && i.naturalWidth > 0)",
                timeout=5000,
            )
            widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
            assert widths == [256] * 6
            captions = page.locator("figcaption").all_inner_texts()
            assert "-70.0 mm" in captions[0] and "instance 20" in captions[0]
            # The slider sets the heat maps' opacity.
            page.locator("#opacity").fill("80")
            opacity = page.locator("img.overlay").first.evaluate("e => getComputedStyle(e).opacity")
            assert opacity == "0.8"
            # The lung window swaps the slice images, which load as well.
            page.locator("#lung-window").check()
            page.wait_for_function(
                "() => [...document.querySelectorAll('img.slice')]"
                ".every(i => i.src.endsWith('_lung.png') && i.complete && i.naturalWidth > 0)",
                timeout=5000,
            )
            page.locator("#lung-window").uncheck()
            # Click to enlarge.
            page.locator(".key-image .stack").first.click()
            assert page.locator("dialog#enlarged").evaluate("d => d.open")
            page.locator("dialog#enlarged button").click()
            page.screenshot(path=str(ARTIFACTS / "study_view.png"), full_page=True)

            # Confirm, then see it on the worklist.
            page.locator("input[name=comment]").fill("segmental, right lower lobe")
            page.locator("#confirm").click()
            page.wait_for_url(f"{base}/study/{uid}")
            assert "confirmed PE" in page.locator("#feedback").inner_text()
            page.goto(f"{base}/")
            assert row.locator(".verdict-confirmed").inner_text() == "Confirmed PE"
            # Reject (a changed mind): the worklist shows the newest verdict.
            page.goto(f"{base}/study/{uid}")
            page.locator("#reject").click()
            page.wait_for_url(f"{base}/study/{uid}")
            page.goto(f"{base}/")
            assert row.locator(".verdict-rejected").inner_text() == "Rejected: no PE"
            assert row.locator(".by").inner_text() == "by web.token, just now"
            page.screenshot(path=str(ARTIFACTS / "worklist_feedback.png"), full_page=True)
            assert errors == [], "\n".join(errors)
            # Signing out (a form the CSP must let post) leaves the worklist asking for a
            # token: the 401 page (and its favicon's) are the only console errors after it.
            assert page.locator("#user").inner_text() == "web.token"
            page.locator("form.account button").click()
            page.wait_for_url(f"{base}/")
            assert page.locator("#user").count() == 0 and row.count() == 0
            assert page.goto(f"{base}/").status == 401
            assert all("401 (Unauthorized)" in e for e in errors), "\n".join(errors)
        finally:
            browser.close()

    # Without a token (loopback) and without web.show_patient_identity the same
    # worklist shows no identity.
    sessions = open_db(config)
    anonymous = make_config(config.data_dir.parent, web={"port": 0, "worklist_hours": None})
    open_web = start_web(anonymous, sessions)
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{open_web.port}/")
                text = page.locator("main").inner_text()
                assert "ACC-VIEW" in text and "BROWSER^PATIENT" not in text
                assert "PID-SECRET" not in text
            finally:
                browser.close()
    finally:
        open_web.stop()
    for name in ("study_view.png", "worklist_feedback.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000
