"""The study view, its key images, and the verdict form with its CSRF guard."""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from support import make_config, open_db
from test_web import Outcome, add_study

from triage.config import Config
from triage.db.models import (
    AuditEvent,
    Decision,
    DeliveryState,
    Feedback,
    Instance,
    JobState,
    Result,
    SeriesState,
    utcnow,
)
from triage.errors import ConfigError
from triage.monitor import read_records
from triage.storage.outbox import outbox_dir
from triage.web import create_app
from triage.web.auth import COOKIE_NAME, cookie_user, cookie_value
from triage.web.feedback import CSRF_COOKIE, CSRF_FIELD

# A 1x1 PNG: the route serves bytes, it does not decode them.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc000000301010018dd8db00000000049454e44ae426082"
)


def _setup(tmp_path: Path, **web: object) -> tuple[Config, sessionmaker[Session], TestClient]:
    config = make_config(tmp_path, web={"port": 0, "worklist_hours": None, **web})
    sessions = open_db(config)
    return config, sessions, TestClient(create_app(config, sessions))


def _positive(sessions: sessionmaker[Session], slices: int = 5) -> tuple[str, int]:
    """A flagged study whose result has slice probabilities at known positions."""
    with sessions.begin() as session:
        study = add_study(
            session,
            "ACC-1",
            utcnow(),
            Outcome(SeriesState.QUEUED, JobState.DONE, Decision.PRESENT, 0.9, 2, instances=slices),
        )
        result = session.scalars(select(Result)).one()
        instances = session.scalars(
            select(Instance).where(Instance.series_id == result.series_id)
        ).all()
        probabilities = {}
        for i, instance in enumerate(instances):
            instance.image_position_patient = f"0\\0\\{-100 + 5 * i}"
            probabilities[instance.sop_instance_uid] = 0.1 + 0.2 * i
        result.slice_probabilities = probabilities
        result.threshold_slice = 0.5
        return study.study_instance_uid, result.id


def _key_images(config: Config, result_id: int) -> Path:
    folder = outbox_dir(config.data_dir, result_id) / "key_images"
    folder.mkdir(parents=True)
    for name in ("k0.png", "k0_lung.png", "k0_overlay.png"):
        (folder / name).write_bytes(PNG)
    # key_images.json as the worker (triage.analyse.key_images) writes it.
    index = {
        "method": "grad-cam",
        "threshold": 0.6,
        "curve": [
            {"sop_instance_uid": "1.2.1", "position_mm": -100.0, "probability": 0.1},
            {"sop_instance_uid": "1.2.2", "position_mm": -95.0, "probability": 0.9},
            {"sop_instance_uid": "1.2.3", "position_mm": -90.0, "probability": 0.2},
        ],
        "images": [
            {
                "sop_instance_uid": "1.2.3",
                "instance_number": 42,
                "position_mm": -87.5,
                "probability": 0.93,
                "pe_window": "k0.png",
                "lung_window": "k0_lung.png",
                "heatmap": "k0_overlay.png",
            }
        ],
    }
    (folder / "key_images.json").write_text(json.dumps(index))
    return folder


def _old_key_images(config: Config, result_id: int) -> Path:
    folder = outbox_dir(config.data_dir, result_id) / "key_images"
    folder.mkdir(parents=True)
    for name in ("k0.png", "k0_lung.png", "k0_overlay.png"):
        (folder / name).write_bytes(PNG)
    index = {
        "images": [
            {
                "image": "k0.png",
                "lung": "k0_lung.png",
                "overlay": "k0_overlay.png",
                "sop_instance_uid": "1.2.3",
                "instance_number": 42,
                "position_mm": -87.5,
                "probability": 0.93,
            }
        ],
        "curve": {
            "positions_mm": [-100, -95, -90],
            "probabilities": [0.1, 0.9, 0.2],
            "threshold": 0.6,
        },
    }
    (folder / "key_images.json").write_text(json.dumps(index))
    return folder


def _csrf(client: TestClient, uid: str) -> str:
    page = client.get(f"/study/{uid}")
    assert page.status_code == 200
    field = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', page.text)
    assert field is not None
    assert client.cookies.get(CSRF_COOKIE) == field.group(1)
    return field.group(1)


def test_the_study_view_without_key_images_plots_the_result_rows_curve(tmp_path: Path) -> None:
    _config, sessions, client = _setup(tmp_path)
    uid, _ = _positive(sessions)
    page = client.get(f"/study/{uid}")
    assert page.status_code == 200
    assert "form-action 'self'" in page.headers["content-security-policy"]
    polyline = re.search(r'<polyline class="line" points="([^"]+)"', page.text)
    assert polyline is not None and len(polyline.group(1).split()) == 5
    assert 'id="threshold"' in page.text and "threshold 0.50" in page.text
    assert "-100 mm" in page.text and "-80 mm" in page.text
    assert 'id="no-images"' in page.text and "not available" in page.text
    assert client.get("/study/1.2.3.4.5.6").status_code == 404


@pytest.mark.parametrize("layout", ["worker", "curve as a dict"])
def test_the_study_view_shows_the_key_images_with_captions_overlay_and_curve(
    tmp_path: Path, layout: str
) -> None:
    config, sessions, client = _setup(tmp_path)
    uid, result_id = _positive(sessions)
    (_key_images if layout == "worker" else _old_key_images)(config, result_id)
    page = client.get(f"/study/{uid}").text
    assert f'src="/study/{uid}/key-images/k0.png"' in page
    assert f'data-lung="/study/{uid}/key-images/k0_lung.png"' in page
    assert f'class="overlay" src="/study/{uid}/key-images/k0_overlay.png"' in page
    assert "-87.5 mm" in page and "instance 42" in page and "93%" in page
    assert 'id="opacity"' in page and 'id="lung-window"' in page
    # The worker's curve (three points, its threshold) wins over the result row's.
    polyline = re.search(r'<polyline class="line" points="([^"]+)"', page)
    assert polyline is not None and len(polyline.group(1).split()) == 3
    assert "threshold 0.60" in page
    image = client.get(f"/study/{uid}/key-images/k0.png")
    assert image.status_code == 200 and image.content == PNG
    assert image.headers["content-type"] == "image/png"


def test_an_undetermined_result_shows_its_reason(tmp_path: Path) -> None:
    _config, sessions, client = _setup(tmp_path)
    with sessions.begin() as session:
        study = add_study(
            session,
            "ACC-U",
            utcnow(),
            Outcome(
                SeriesState.QUEUED,
                JobState.UNDETERMINED,
                Decision.UNDETERMINED,
                reason="slice spacing 7.5 mm is coarser than 3 mm",
            ),
        )
        uid = study.study_instance_uid
    page = client.get(f"/study/{uid}").text
    assert "Undetermined" in page
    assert "Reason: slice spacing 7.5 mm is coarser than 3 mm" in page
    assert 'id="no-images"' in page and "(the model did not decide)" in page


def test_an_undetermined_job_without_a_result_shows_its_reason(tmp_path: Path) -> None:
    _config, sessions, client = _setup(tmp_path)
    with sessions.begin() as session:
        study = add_study(
            session,
            "ACC-J",
            utcnow(),
            Outcome(SeriesState.QUEUED, JobState.UNDETERMINED, reason="only 12 slices"),
        )
        uid = study.study_instance_uid
    page = client.get(f"/study/{uid}").text
    assert "Undetermined: only 12 slices" in page and "/feedback" not in page


@pytest.mark.parametrize(
    "name",
    [
        "..%2Fsr.dcm",
        "..%2F..%2Foutside.png",
        "%2e%2e",
        "sr.dcm",
        ".hidden.png",
        "escape.png",
        "key_images.json",
        "missing.png",
    ],
)
def test_key_images_serve_only_png_files_of_that_results_folder(tmp_path: Path, name: str) -> None:
    config, sessions, client = _setup(tmp_path)
    uid, result_id = _positive(sessions)
    folder = _key_images(config, result_id)
    (folder.parent / "sr.dcm").write_bytes(b"DICM secret")
    (folder.parent.parent / "outside.png").write_bytes(PNG)
    (folder / ".hidden.png").write_bytes(PNG)
    # A link inside the folder that points out of it is not followed.
    (folder / "escape.png").symlink_to(folder.parent.parent / "outside.png")
    response = client.get(f"/study/{uid}/key-images/{name}")
    assert response.status_code == 404
    assert response.content != PNG and b"secret" not in response.content


def test_a_verdict_is_recorded_with_who_and_an_audit_event_and_shows_on_the_worklist(
    tmp_path: Path,
) -> None:
    _config, sessions, client = _setup(tmp_path)
    uid, result_id = _positive(sessions)
    token = _csrf(client, uid)
    response = client.post(
        f"/study/{uid}/feedback",
        data={CSRF_FIELD: token, "verdict": "confirmed", "comment": "segmental, right lower lobe"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == f"/study/{uid}"
    with sessions() as session:
        feedback = session.scalars(select(Feedback)).one()
        assert (feedback.result_id, feedback.verdict.value, feedback.who) == (
            result_id,
            "confirmed",
            "loopback (no token)",
        )
        assert feedback.comment == "segmental, right lower lobe"
        audit = session.scalars(select(AuditEvent).where(AuditEvent.kind == "feedback")).one()
        assert audit.detail["result_id"] == result_id and audit.detail["verdict"] == "confirmed"
    assert "Confirmed PE" in client.get("/").text
    assert client.get("/api/worklist").json()["rows"][0]["feedback"] == "confirmed"
    page = client.get(f"/study/{uid}").text
    assert "confirmed PE" in page and "segmental, right lower lobe" in page
    # triage monitor reads the same table.
    records = read_records(sessions.kw["bind"])
    assert records is not None and [(r.flagged, r.verdict) for r in records] == [
        (True, "confirmed")
    ]
    # A changed mind: the newest verdict shows.
    client.post(f"/study/{uid}/feedback", data={CSRF_FIELD: token, "verdict": "rejected"})
    assert "Rejected: no PE" in client.get("/").text
    assert client.get("/api/worklist").json()["rows"][0]["feedback"] == "rejected"


def test_a_post_without_the_matching_csrf_token_is_refused(tmp_path: Path) -> None:
    _config, sessions, client = _setup(tmp_path)
    uid, _ = _positive(sessions)
    # No cookie and no field: what another site's form would send.
    assert client.post(f"/study/{uid}/feedback", data={"verdict": "confirmed"}).status_code == 403
    token = _csrf(client, uid)
    # The cookie is there (the browser sends it) but the field is a guess.
    refused = client.post(
        f"/study/{uid}/feedback", data={CSRF_FIELD: token[:-2] + "xx", "verdict": "confirmed"}
    )
    assert refused.status_code == 403 and "CSRF" in refused.text
    # A right token with a wrong verdict is a clear 400, and records nothing either.
    bad = client.post(f"/study/{uid}/feedback", data={CSRF_FIELD: token, "verdict": "maybe"})
    assert bad.status_code == 400 and "confirmed" in bad.text
    with sessions() as session:
        assert session.scalars(select(Feedback)).all() == []
        assert session.scalars(select(AuditEvent)).all() == []


def test_with_a_token_the_verdict_needs_it_and_records_the_token_as_who(tmp_path: Path) -> None:
    _config, sessions, client = _setup(tmp_path, token="s3cret-token")
    uid, _ = _positive(sessions)
    assert client.get(f"/study/{uid}").status_code == 401
    assert client.post(f"/study/{uid}/feedback", data={"verdict": "confirmed"}).status_code == 401
    expires = int(utcnow().timestamp()) + 10**9
    client.cookies.set(COOKIE_NAME, cookie_value("web.token", "s3cret-token", expires))
    token = _csrf(client, uid)
    client.post(f"/study/{uid}/feedback", data={CSRF_FIELD: token, "verdict": "rejected"})
    with sessions() as session:
        assert session.scalars(select(Feedback.who)).one() == "web.token"


# --- named users (web.users): each verdict records its radiologist ------------------


SMITH, JONES = "smith-token-0123456789", "jones-token-9876543210"
USERS = {"dr.smith": SMITH, "j.jones@rad": JONES}


def _sign_in(client: TestClient, token: str) -> str:
    """Open a session with ``/?token=`` as a browser does; the session cookie's value."""
    response = client.get(f"/?token={token}", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"
    assert token not in response.headers["set-cookie"]
    cookie = client.cookies.get(COOKIE_NAME)
    assert cookie is not None
    return cookie.strip('"')


def test_two_users_each_verdict_records_its_own_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config, sessions, smith = _setup(tmp_path, users=USERS)
    jones = TestClient(create_app(config, sessions))
    uid, result_id = _positive(sessions)
    # Dr Smith in a browser session, Dr Jones with a bearer token.
    _sign_in(smith, SMITH)
    jones.headers["Authorization"] = f"Bearer {JONES}"
    sent = smith.post(
        f"/study/{uid}/feedback",
        data={CSRF_FIELD: _csrf(smith, uid), "verdict": "confirmed"},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    assert "by dr.smith at" in smith.get(f"/study/{uid}").text
    sent = jones.post(
        f"/study/{uid}/feedback",
        data={CSRF_FIELD: _csrf(jones, uid), "verdict": "rejected"},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    with sessions() as session:
        verdicts = session.execute(
            select(Feedback.who, Feedback.verdict, Feedback.result_id).order_by(Feedback.id)
        ).all()
        assert [(w, v.value, r) for w, v, r in verdicts] == [
            ("dr.smith", "confirmed", result_id),
            ("j.jones@rad", "rejected", result_id),
        ]
        audit = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "feedback").order_by(AuditEvent.id)
        ).all()
        assert [a.detail["who"] for a in audit] == ["dr.smith", "j.jones@rad"]
    # The newest verdict and its user show on the study view and the worklist, to either
    # reader; each page says who is signed in.
    assert "by j.jones@rad at" in smith.get(f"/study/{uid}").text
    worklist = smith.get("/").text
    assert "Rejected: no PE" in worklist and "by j.jones@rad, just now" in worklist
    assert 'Signed in as <b id="user">dr.smith</b>' in worklist
    assert 'Signed in as <b id="user">j.jones@rad</b>' in jones.get(f"/study/{uid}").text
    row = jones.get("/api/worklist").json()["rows"][0]
    assert (row["feedback"], row["feedback_by"]) == ("rejected", "j.jones@rad")
    assert row["feedback_at"].endswith("Z")
    # The user's name is logged with the verdict; no token is logged (by the server: the
    # test client's own httpx log has the address it asked for).
    server_records = [r for r in caplog.records if not r.name.startswith("httpx")]
    logged = capsys.readouterr().out + capsys.readouterr().err
    logged += "\n".join(r.getMessage() for r in server_records)
    assert "dr.smith" in logged and "j.jones@rad" in logged
    assert SMITH not in logged and JONES not in logged


def test_a_wrong_token_is_refused(tmp_path: Path) -> None:
    _config, sessions, client = _setup(tmp_path, users=USERS, token="shared-token")
    uid, _ = _positive(sessions)
    for wrong in ("nope", SMITH + "x", SMITH[:-1], f"{SMITH} {JONES}", "dr.smith"):
        bearer = {"Authorization": f"Bearer {wrong}"}
        assert client.get("/api/worklist", headers=bearer).status_code == 401, wrong
        assert client.get(f"/study/{uid}", headers=bearer).status_code == 401, wrong
        assert client.get("/", params={"token": wrong}, follow_redirects=False).status_code == 401
    assert client.post(f"/study/{uid}/feedback", data={"verdict": "confirmed"}).status_code == 401
    assert client.cookies.get(COOKIE_NAME) is None
    with sessions() as session:
        assert session.scalars(select(Feedback)).all() == []
    # Each configured token works, the shared one too.
    for token in (SMITH, JONES, "shared-token"):
        bearer = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/worklist", headers=bearer).status_code == 200


def test_a_session_cookie_altered_to_name_another_user_is_refused(tmp_path: Path) -> None:
    config, sessions, client = _setup(tmp_path, users=USERS, token="shared-token")
    uid, _ = _positive(sessions)
    cookie = _sign_in(client, SMITH)
    expires, mac, user = cookie.split(".", 2)
    assert user == "dr.smith" and client.get("/").status_code == 200
    future = int(expires)
    forged = [
        # Dr Smith's cookie, its name changed.
        f"{expires}.{mac}.j.jones@rad",
        f"{expires}.{mac}.web.token",
        # Signed with Dr Smith's token but naming Dr Jones or the shared token's user.
        cookie_value("j.jones@rad", SMITH, future),
        cookie_value("web.token", SMITH, future),
        # A user who is not (or no longer) configured.
        cookie_value("dr.who", SMITH, future),
        # The cookie of before web.users: an expiry and its MAC, no name.
        f"{expires}.{mac}",
    ]
    for value in forged:
        other = TestClient(create_app(config, sessions))
        other.cookies.set(COOKIE_NAME, value)
        assert other.get("/").status_code == 401, value
        assert other.get(f"/study/{uid}").status_code == 401, value
        refused = other.post(f"/study/{uid}/feedback", data={"verdict": "rejected"})
        assert refused.status_code == 401, value
    # A Latin-1 digit as the expiry (a quoted cookie may hold one) is refused too, not
    # a server error.
    assert cookie_user(USERS, f"\u00b2.{mac}.dr.smith", 0) is None
    with sessions() as session:
        assert session.scalars(select(Feedback)).all() == []


def test_signing_in_with_another_token_switches_the_browsers_user(tmp_path: Path) -> None:
    # A shared reading-room workstation: the next radiologist opens /?token= with theirs.
    _config, sessions, client = _setup(tmp_path, users=USERS)
    uid, _ = _positive(sessions)
    _sign_in(client, SMITH)
    _sign_in(client, JONES)
    client.post(
        f"/study/{uid}/feedback", data={CSRF_FIELD: _csrf(client, uid), "verdict": "rejected"}
    )
    with sessions() as session:
        assert session.scalars(select(Feedback.who)).one() == "j.jones@rad"


def test_sign_out_deletes_the_session_cookie_and_only_a_post_does(tmp_path: Path) -> None:
    _config, _sessions, client = _setup(tmp_path, users=USERS)
    _sign_in(client, SMITH)
    assert client.get("/").status_code == 200
    # A link, a prefetch or an image tag does not sign anyone out.
    assert client.get("/signout", follow_redirects=False).status_code == 405
    assert client.get("/").status_code == 200
    out = client.post("/signout", follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/"
    assert COOKIE_NAME in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
    assert client.cookies.get(COOKIE_NAME) is None
    assert client.get("/").status_code == 401
    # Without a session there is nothing to sign out of: the gate refuses it like any page.
    assert client.post("/signout", follow_redirects=False).status_code == 401


def test_without_a_token_no_one_is_signed_in(tmp_path: Path) -> None:
    _config, sessions, client = _setup(tmp_path)
    uid, _ = _positive(sessions)
    assert "Signed in as" not in client.get("/").text
    assert "Signed in as" not in client.get(f"/study/{uid}").text
    # No gate, no sign-out route.
    assert client.post("/signout").status_code == 404


@pytest.mark.parametrize(
    ("users", "token", "path", "message"),
    [
        ({"dr.smith": "short-token"}, None, "web.users", "the token of dr.smith is shorter"),
        ({"dr.smith": SMITH, "dr.jones": SMITH}, None, "web", "dr.smith and dr.jones have the"),
        ({"dr smith": SMITH}, None, "web.users", "'dr smith' must be letters, digits"),
        ({"": SMITH}, None, "web.users", "must be letters, digits"),
        ({"dr.smith\u200b": SMITH}, None, "web.users", "must be letters, digits"),
        ({JONES + JONES: SMITH}, None, "web.users", "longer than 32 characters"),
        ({"web.token": SMITH}, None, "web.users", "'web.token' is the name feedback records"),
        ({"dr.smith": SMITH}, SMITH, "web", "dr.smith and web.token have the same one"),
    ],
)
def test_web_users_are_validated(
    tmp_path: Path, users: dict[str, str], token: str | None, path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, web={"users": users, "token": token})
    [(problem_path, reason)] = info.value.problems
    assert problem_path == path
    assert message in reason
    # A configuration error is printed and logged: it never shows a token.
    assert SMITH not in str(info.value) and JONES not in str(info.value)


def test_with_only_web_users_the_identity_is_shown_and_any_host_is_accepted(
    tmp_path: Path,
) -> None:
    _config, sessions, client = _setup(tmp_path, users=USERS)
    _named(sessions)
    for path in ("/", "/api/worklist"):
        refused = client.get(path)
        assert refused.status_code == 401
        assert NAME not in refused.text and PID not in refused.text
    bearer = {"Authorization": f"Bearer {JONES}"}
    assert NAME in client.get("/", headers=bearer).text
    assert client.get("/api/worklist", headers=bearer).json()["rows"][0]["patient_id"] == PID
    # A host other machines reach needs web.token or web.users; web.users alone will do.
    exposed = make_config(tmp_path, web={"host": "0.0.0.0", "users": USERS})
    assert exposed.web.token is None and exposed.web.authenticated
    with pytest.raises(ConfigError, match=r"web\.token or web\.users is required"):
        make_config(tmp_path, web={"host": "0.0.0.0"})


# --- the worklist's rows: identity, time since arrival, delivery meaning, viewer link ---


NAME, PID = "DOE^JANE^IDENTITY", "PID-SECRET"


def _named(sessions: sessionmaker[Session], minutes_ago: int = 14) -> str:
    with sessions.begin() as session:
        study = add_study(
            session,
            "ACC-N",
            utcnow() - timedelta(minutes=minutes_ago, seconds=5),
            Outcome(SeriesState.QUEUED, JobState.QUEUED),
        )
        study.patient_name = NAME
        study.study_description = "CT PULMONARY ANGIOGRAM"
        study.study_date = "20260301"
        return study.study_instance_uid


def test_without_a_token_patient_identity_is_hidden_by_default(tmp_path: Path) -> None:
    _config, sessions, client = _setup(tmp_path)
    uid = _named(sessions)
    for response in (
        client.get("/"),
        client.get("/api/worklist"),
        client.get("/metrics"),
        client.get(f"/study/{uid}"),
    ):
        assert response.status_code == 200
        assert NAME not in response.text and PID not in response.text
    page = client.get("/").text
    # Everything else of the row is there.
    assert "CT PULMONARY ANGIOGRAM" in page and "2026-03-01" in page and "CTPA 1" in page
    assert "14 min ago" in page
    assert "nothing to send until the analysis ends" in page
    assert f'href="/study/{uid}"' in page
    assert "Viewer" not in page
    row = client.get("/api/worklist").json()["rows"][0]
    assert "patient_name" not in row and "patient_id" not in row
    assert row["study_description"] == "CT PULMONARY ANGIOGRAM"


def test_without_a_token_show_patient_identity_shows_it(tmp_path: Path) -> None:
    _config, sessions, client = _setup(tmp_path, show_patient_identity=True)
    uid = _named(sessions)
    page = client.get("/").text
    assert NAME in page and PID in page and "<th>Patient</th>" in page
    assert NAME in client.get(f"/study/{uid}").text
    row = client.get("/api/worklist").json()["rows"][0]
    assert (row["patient_name"], row["patient_id"]) == (NAME, PID)
    assert NAME not in client.get("/metrics").text


def test_with_a_token_only_authenticated_readers_see_the_identity(tmp_path: Path) -> None:
    _config, sessions, client = _setup(tmp_path, token="s3cret-token")
    _named(sessions)
    for path in ("/", "/api/worklist", "/metrics"):
        refused = client.get(path)
        assert refused.status_code == 401
        assert NAME not in refused.text and PID not in refused.text
    bearer = {"Authorization": "Bearer s3cret-token"}
    assert NAME in client.get("/", headers=bearer).text
    assert client.get("/api/worklist", headers=bearer).json()["rows"][0]["patient_id"] == PID
    assert NAME not in client.get("/metrics", headers=bearer).text


def test_the_viewer_link_fills_in_the_study_uid(tmp_path: Path) -> None:
    template = "https://pacs.example/viewer?StudyInstanceUIDs={study_instance_uid}"
    _config, sessions, client = _setup(tmp_path, viewer_url=template)
    uid = _named(sessions)
    assert f'href="https://pacs.example/viewer?StudyInstanceUIDs={uid}"' in client.get("/").text
    with pytest.raises(ConfigError, match="only the placeholder"):
        make_config(tmp_path, web={"viewer_url": "https://pacs/{patient_id}"})


def test_a_sent_delivery_says_what_it_means(tmp_path: Path) -> None:
    _config, sessions, client = _setup(tmp_path)
    with sessions.begin() as session:
        add_study(
            session,
            "ACC-S",
            utcnow(),
            Outcome(
                SeriesState.QUEUED,
                JobState.DONE,
                Decision.ABSENT,
                0.05,
                deliveries=[("pacs", DeliveryState.DEAD, 5, "connection refused")],
            ),
        )
    page = client.get("/").text
    assert "dead (pacs: connection refused)" in page
    assert "sending gave up; an admin resends with `triage retry`" in page


def test_the_pages_log_no_identity_and_no_comment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _config, sessions, client = _setup(tmp_path, token="s3cret-token")
    uid = _named(sessions)
    positive, _ = _positive(sessions)
    client.headers["Authorization"] = "Bearer s3cret-token"
    assert NAME in client.get("/").text
    assert PID in client.get("/api/worklist").text
    assert NAME in client.get(f"/study/{uid}").text
    token = _csrf(client, positive)
    sent = client.post(
        f"/study/{positive}/feedback",
        data={CSRF_FIELD: token, "verdict": "rejected", "comment": "COMMENT-SECRET"},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    assert client.post(f"/study/{positive}/feedback", data={"verdict": "x"}).status_code == 403
    logged = capsys.readouterr().out + capsys.readouterr().err + caplog.text
    assert "web_feedback_recorded" in logged and "web_feedback_csrf_refused" in logged
    for secret in (NAME, PID, "COMMENT-SECRET", "s3cret-token"):
        assert secret not in logged, secret
