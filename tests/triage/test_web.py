"""The worklist, its JSON API, /healthz and /metrics, against rows put straight in a database."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from support import make_config, open_db

from triage.analyse.lease import beat
from triage.config import Config
from triage.db.models import (
    Decision,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    Study,
    WorkerHeartbeat,
    utcnow,
)
from triage.supervisor import Supervision
from triage.web import WebError, create_app, start_web, worklist_rows
from triage.web.auth import COOKIE_NAME, cookie_value
from triage.web.health import check_health

MALICIOUS = "<script>alert(1)</script>"
T0 = datetime(2024, 5, 1, 8, 0, 0)


@dataclass
class Outcome:
    """What happened to one series, for building rows."""

    state: SeriesState = SeriesState.QUEUED
    job: JobState | None = None
    decision: Decision | None = None
    probability: float | None = None
    flagged: int = 0
    # (destination, state, attempts, last_error)
    deliveries: list[tuple[str, DeliveryState, int, str | None]] = field(default_factory=list)
    latency_s: float = 10.0
    reason: str | None = None
    error: str | None = None
    instances: int = 0


_uid_counter = 0


def _uid() -> str:
    global _uid_counter
    _uid_counter += 1
    return f"1.2.826.0.1.3680043.10.999.{_uid_counter}"


def add_study(
    session: Session, accession: str | None, arrived: datetime, *outcomes: Outcome
) -> Study:
    """A study and its series, jobs, results and deliveries, as the daemon would leave them."""
    study = Study(
        study_instance_uid=_uid(),
        accession_number=accession,
        patient_id="PID-SECRET",
        first_received_at=arrived,
        last_received_at=arrived,
    )
    session.add(study)
    session.flush()
    for number, out in enumerate(outcomes, start=1):
        completed = arrived + timedelta(minutes=1)
        series = Series(
            study_id=study.id,
            series_instance_uid=_uid(),
            modality="CT",
            series_description=f"CTPA {number}",
            series_number=number,
            state=out.state,
            skip_reason=out.reason if out.state == SeriesState.SKIPPED else None,
            first_received_at=arrived,
            last_received_at=arrived,
            completed_at=None if out.state == SeriesState.RECEIVING else completed,
        )
        session.add(series)
        session.flush()
        for i in range(out.instances):
            session.add(
                Instance(
                    series_id=series.id,
                    sop_instance_uid=_uid(),
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    instance_number=i + 1,
                    file_path=f"/spool/{i}.dcm",
                    file_size=1000,
                )
            )
        if out.job is None:
            continue
        job = Job(
            series_id=series.id,
            state=out.job,
            reason=out.reason if out.job == JobState.UNDETERMINED else None,
            error=out.error,
            attempts=1,
            created_at=completed,
            updated_at=completed,
        )
        session.add(job)
        session.flush()
        if out.decision is None:
            continue
        result = Result(
            job_id=job.id,
            series_id=series.id,
            decision=out.decision,
            stack_probability=out.probability,
            flagged_sop_instance_uids=[_uid() for _ in range(out.flagged)],
            reason=out.reason,
            created_at=completed + timedelta(seconds=out.latency_s),
        )
        session.add(result)
        session.flush()
        for destination, state, attempts, error in out.deliveries:
            session.add(
                Delivery(
                    result_id=result.id,
                    destination=destination,
                    state=state,
                    attempts=attempts,
                    last_error=error,
                )
            )
    session.flush()
    return study


def _at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


SENT, RETRYING, DEAD, PENDING = (
    DeliveryState.SENT,
    DeliveryState.RETRYING,
    DeliveryState.DEAD,
    DeliveryState.PENDING,
)

#: Accession numbers in the order the worklist must show them.
EXPECTED_ORDER = [
    "ACC-POS-HIGH",  # 97 %, arrived late: jumps to the top
    "ACC-MULTI",  # 81 % on its second series
    "ACC-POS-LOW",  # 62 %
    "ACC-NEG-EARLY",  # then every other study by arrival
    "ACC-RECV",
    "ACC-QUEUED",
    "ACC-RUN",
    "ACC-UNDET",
    "ACC-FAIL",
    "ACC-NEG-LATE",
    MALICIOUS,
    "ACC-SKIP",  # nothing to analyse: last
]


def populate(sessions: sessionmaker[Session]) -> None:
    """One study in every state, arriving a minute apart, positives among them."""
    done = SeriesState.QUEUED
    with sessions.begin() as s:
        add_study(
            s,
            "ACC-NEG-EARLY",
            _at(0),
            Outcome(
                done,
                JobState.DONE,
                Decision.ABSENT,
                0.10,
                0,
                [("pacs", SENT, 1, None)],
                4.0,
                instances=3,
            ),
        )
        add_study(
            s,
            "ACC-POS-LOW",
            _at(1),
            Outcome(
                done,
                JobState.DONE,
                Decision.PRESENT,
                0.62,
                3,
                [("pacs", SENT, 2, None), ("ris", RETRYING, 3, "connection refused")],
                12.0,
                instances=2,
            ),
        )
        add_study(s, "ACC-RECV", _at(2), Outcome(SeriesState.RECEIVING))
        add_study(s, "ACC-QUEUED", _at(3), Outcome(done, JobState.QUEUED))
        add_study(s, "ACC-RUN", _at(4), Outcome(done, JobState.RUNNING))
        add_study(
            s,
            "ACC-UNDET",
            _at(5),
            Outcome(
                done,
                JobState.UNDETERMINED,
                Decision.UNDETERMINED,
                None,
                0,
                [("pacs", PENDING, 0, None)],
                7.0,
                reason="too few axial slices",
            ),
        )
        add_study(s, "ACC-FAIL", _at(6), Outcome(done, JobState.FAILED, error="CUDA out of memory"))
        add_study(
            s,
            "ACC-SKIP",
            _at(7),
            Outcome(SeriesState.SKIPPED, reason="no axial CT series"),
        )
        add_study(
            s,
            "ACC-POS-HIGH",
            _at(8),
            Outcome(
                done,
                JobState.DONE,
                Decision.PRESENT,
                0.97,
                5,
                [("pacs", SENT, 1, None), ("ris", DEAD, 10, "AR: application rejected")],
                45.0,
            ),
        )
        add_study(
            s,
            "ACC-NEG-LATE",
            _at(9),
            Outcome(done, JobState.DONE, Decision.ABSENT, 0.2, 0, [], 200.0),
        )
        add_study(s, MALICIOUS, _at(10), Outcome(SeriesState.RECEIVING))
        add_study(
            s,
            "ACC-MULTI",
            _at(11),
            Outcome(done, JobState.DONE, Decision.ABSENT, 0.30, 0, [], 30.0),
            Outcome(
                done,
                JobState.DONE,
                Decision.PRESENT,
                0.81,
                2,
                [("pacs", SENT, 1, None), ("ris", SENT, 1, None)],
                31.0,
            ),
        )


@pytest.fixture
def sqlite_sessions(tmp_path: Path) -> sessionmaker[Session]:
    return open_db(f"sqlite:///{tmp_path / 'triage.db'}")


def _client(tmp_path: Path, sessions: sessionmaker[Session], **web: object) -> TestClient:
    # The fixtures arrived in 2024: list every study, not only the last few days'.
    config: Config = make_config(tmp_path, web={"port": 0, "worklist_hours": None, **web})
    return TestClient(create_app(config, sessions))


# --- the worklist query -------------------------------------------------------------


def test_worklist_order_and_content_on_each_database(db_url: str) -> None:
    sessions = open_db(db_url)
    populate(sessions)

    rows = {r.accession_number: r for r in worklist_rows(sessions)}
    assert [r.accession_number for r in worklist_rows(sessions)] == EXPECTED_ORDER

    states = {acc: r.state for acc, r in rows.items()}
    assert states == {
        "ACC-POS-HIGH": "done",
        "ACC-MULTI": "done",
        "ACC-POS-LOW": "done",
        "ACC-NEG-EARLY": "done",
        "ACC-RECV": "receiving",
        "ACC-QUEUED": "queued",
        "ACC-RUN": "analysing",
        "ACC-UNDET": "undetermined",
        "ACC-FAIL": "failed",
        "ACC-NEG-LATE": "done",
        MALICIOUS: "receiving",
        "ACC-SKIP": "skipped",
    }
    assert {acc for acc, r in rows.items() if r.flagged} == {
        "ACC-POS-HIGH",
        "ACC-MULTI",
        "ACC-POS-LOW",
    }
    high = rows["ACC-POS-HIGH"]
    assert high.probability == pytest.approx(0.97)
    assert high.flagged_slices == 5
    assert high.delivery == "dead (ris: AR: application rejected); sent 1/2"
    assert rows["ACC-POS-LOW"].delivery == "retrying (ris); sent 1/2"
    assert rows["ACC-NEG-EARLY"].delivery == "sent 1/1"
    assert rows["ACC-UNDET"].delivery == "pending (pacs)"
    assert rows["ACC-NEG-LATE"].delivery == ""
    # The positive series speaks for a study with a negative one beside it.
    multi = rows["ACC-MULTI"]
    assert (multi.probability, multi.flagged_slices, multi.series_description) == (
        pytest.approx(0.81),
        2,
        "CTPA 2",
    )
    assert multi.delivery == "sent 2/2"
    assert rows["ACC-UNDET"].detail == "too few axial slices"
    assert rows["ACC-FAIL"].detail == "CUDA out of memory"
    assert rows["ACC-SKIP"].detail == "no axial CT series"
    assert rows["ACC-NEG-EARLY"].arrived_at == _at(0)


def test_a_negative_result_keeps_its_place_and_a_positive_jumps(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    with sqlite_sessions.begin() as s:
        add_study(s, "FIRST", _at(0), Outcome(SeriesState.QUEUED, JobState.QUEUED))
        add_study(s, "SECOND", _at(1), Outcome(SeriesState.QUEUED, JobState.QUEUED))
        add_study(s, "THIRD", _at(2), Outcome(SeriesState.QUEUED, JobState.QUEUED))

    def order() -> list[str | None]:
        return [r.accession_number for r in worklist_rows(sqlite_sessions)]

    def finish(accession: str, decision: Decision, probability: float) -> None:
        with sqlite_sessions.begin() as s:
            job = s.scalars(
                select(Job).join(Series).join(Study).where(Study.accession_number == accession)
            ).one()
            job.state = JobState.DONE
            s.add(
                Result(
                    job_id=job.id,
                    series_id=job.series_id,
                    decision=decision,
                    stack_probability=probability,
                )
            )

    # The first study turns out negative: it stays first, above later pending ones.
    finish("FIRST", Decision.ABSENT, 0.05)
    assert order() == ["FIRST", "SECOND", "THIRD"]
    # The last study turns out positive: it overtakes both earlier ones.
    finish("THIRD", Decision.PRESENT, 0.7)
    assert order() == ["THIRD", "FIRST", "SECOND"]
    # A more probable positive goes above a less probable one, whatever the arrival.
    finish("SECOND", Decision.PRESENT, 0.9)
    assert order() == ["SECOND", "THIRD", "FIRST"]


def test_the_worklist_holds_the_studies_of_its_window(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    now = utcnow()
    with sqlite_sessions.begin() as s:
        add_study(s, "ACC-TODAY", now - timedelta(hours=1), Outcome())
        add_study(s, "ACC-2-DAYS", now - timedelta(hours=47), Outcome())
        add_study(s, "ACC-LAST-WEEK", now - timedelta(days=7), Outcome())
    assert [r.accession_number for r in worklist_rows(sqlite_sessions)] == [
        "ACC-LAST-WEEK",
        "ACC-2-DAYS",
        "ACC-TODAY",
    ]
    since = now - timedelta(hours=48)
    listed = [r.accession_number for r in worklist_rows(sqlite_sessions, since)]
    assert listed == ["ACC-2-DAYS", "ACC-TODAY"]

    client = _client(tmp_path, sqlite_sessions, worklist_hours=48)
    rows = client.get("/api/worklist").json()["rows"]
    assert [r["accession_number"] for r in rows] == ["ACC-2-DAYS", "ACC-TODAY"]
    page = client.get("/").text
    assert "ACC-LAST-WEEK" not in page and "ACC-TODAY" in page
    assert "studies in the last 48 hours" in page
    empty = _client(tmp_path, sqlite_sessions, worklist_hours=0.5).get("/").text
    assert "No studies received in the last 0.5 hours." in empty


# --- the page and the JSON API ------------------------------------------------------


def test_api_worklist_is_the_same_list_as_json(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    populate(sqlite_sessions)
    response = _client(tmp_path, sqlite_sessions).get("/api/worklist")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    rows = response.json()["rows"]
    assert [r["accession_number"] for r in rows] == EXPECTED_ORDER
    top = rows[0]
    assert top["state"] == "done"
    assert top["flagged"] is True
    assert top["decision"] == "present"
    assert top["probability_percent"] == 97.0
    assert top["flagged_slices"] == 5
    assert top["arrived_at"] == "2024-05-01T08:08:00Z"
    assert top["delivery"] == "dead (ris: AR: application rejected); sent 1/2"
    assert {d["destination"]: d["state"] for d in top["deliveries"]} == {
        "pacs": "sent",
        "ris": "dead",
    }
    # The worklist shows accession numbers, never patient IDs.
    assert "PID-SECRET" not in response.text


def test_page_lists_rows_in_order_with_badges_and_escapes_headers(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    populate(sqlite_sessions)
    response = _client(tmp_path, sqlite_sessions, refresh_seconds=7).get("/")
    assert response.status_code == 200
    html = response.text

    rows = re.findall(r'<tr class="study[^"]*".*?</tr>', html, flags=re.S)
    accessions = [re.search(r'<td class="acc">(.*?)</td>', r).group(1) for r in rows]
    assert accessions == [a.replace("<", "&lt;").replace(">", "&gt;") for a in EXPECTED_ORDER]
    flagged = [r for r in rows if "PE suspected" in r]
    assert len(flagged) == 3 and all('class="study positive"' in r for r in flagged)
    assert rows[:3] == flagged
    assert "97%" in rows[0] and ">5<" in rows[0]
    assert "dead (ris: AR: application rejected)" in rows[0]
    # The header's script is text, not markup: the page's own script is the only one.
    assert MALICIOUS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script") == 1
    assert '<script src="/static/worklist.js"></script>' in html
    # No inline script or style may run, only the page's own files.
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<style" not in html and "style=" not in html
    assert "AI triage — not for diagnostic use" in html
    assert 'data-refresh="7"' in html and 'content="7"' in html
    assert "PID-SECRET" not in html


def test_empty_worklist_says_so(tmp_path: Path, sqlite_sessions: sessionmaker[Session]) -> None:
    client = _client(tmp_path, sqlite_sessions)
    assert "No studies received yet." in client.get("/").text
    assert client.get("/api/worklist").json()["rows"] == []


# --- the token ----------------------------------------------------------------------


def test_token_is_required_everywhere_but_healthz(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    client = _client(tmp_path, sqlite_sessions, token="s3cret-token")
    for path in ("/", "/api/worklist", "/metrics"):
        assert client.get(path).status_code == 401, path
        wrong = client.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, path
        good = client.get(path, headers={"Authorization": "Bearer s3cret-token"})
        assert good.status_code == 200, path
    assert client.get("/").headers["www-authenticate"] == "Bearer"
    assert client.get("/healthz").status_code == 200


def test_token_in_the_address_once_gives_a_browser_a_session_cookie(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    client = _client(tmp_path, sqlite_sessions, token="s3cret-token")
    assert client.get("/?token=wrong", follow_redirects=False).status_code == 401

    response = client.get("/?token=s3cret-token", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "s3cret-token" not in cookie
    # The client now holds the cookie; no header needed.
    assert client.get("/").status_code == 200
    assert client.get("/api/worklist").status_code == 200

    stranger = _client(tmp_path, sqlite_sessions, token="s3cret-token")
    stranger.cookies.set(COOKIE_NAME, "forged")
    assert stranger.get("/").status_code == 401


def test_the_session_cookie_expires(tmp_path: Path, sqlite_sessions: sessionmaker[Session]) -> None:
    client = _client(tmp_path, sqlite_sessions, token="s3cret-token", session_hours=2)
    response = client.get("/?token=s3cret-token", follow_redirects=False)
    cookie = response.headers["set-cookie"]
    # The browser drops it after web.session_hours ...
    assert "Max-Age=7200" in cookie
    expires, _, mac = client.cookies[COOKIE_NAME].partition(".")
    assert 7190 <= int(expires) - time.time() <= 7200
    assert client.get("/").status_code == 200

    # ... and the server refuses a copy kept past that time, or one whose expiry was moved.
    past = int(time.time()) - 1
    for stale in (cookie_value("web.token", "s3cret-token", past), f"{int(expires) + 86400}.{mac}"):
        kept = _client(tmp_path, sqlite_sessions, token="s3cret-token", session_hours=2)
        kept.cookies.set(COOKIE_NAME, stale)
        assert kept.get("/").status_code == 401
        assert kept.get("/api/worklist").status_code == 401


def test_no_page_may_be_framed_and_no_cache_keeps_the_metrics(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    client = _client(tmp_path, sqlite_sessions, token="s3cret-token")
    bearer = {"Authorization": "Bearer s3cret-token"}
    for path in ("/", "/api/worklist", "/metrics", "/healthz", "/static/worklist.css"):
        for headers in ({}, bearer):  # the 401 answers too
            response = client.get(path, headers=headers)
            assert response.headers["x-frame-options"] == "DENY", (path, response.status_code)
    assert client.get("/metrics", headers=bearer).headers["cache-control"] == "no-store"


def test_no_token_configured_means_open_on_loopback(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    assert _client(tmp_path, sqlite_sessions).get("/api/worklist").status_code == 200


# --- /healthz -----------------------------------------------------------------------


def _heartbeat(sessions: sessionmaker[Session], worker_id: str, seconds_ago: float) -> None:
    with sessions.begin() as s:
        s.add(
            WorkerHeartbeat(
                worker_id=worker_id,
                hostname="gpu-1",
                pid=1234,
                device="cuda:0 (NVIDIA H200)",
                backend="jax",
                last_seen_at=utcnow() - timedelta(seconds=seconds_ago),
            )
        )


def _queue_job(sessions: sessionmaker[Session], waited_seconds: float) -> None:
    with sessions.begin() as s:
        study = add_study(s, "Q", _at(0), Outcome(SeriesState.QUEUED, JobState.QUEUED))
        job = s.scalars(select(Job).join(Series).where(Series.study_id == study.id)).one()
        job.updated_at = utcnow() - timedelta(seconds=waited_seconds)


def test_healthz_reports_workers_and_the_oldest_queued_job(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    _heartbeat(sqlite_sessions, "worker-a", 5)
    _heartbeat(sqlite_sessions, "worker-b", 3600)
    _queue_job(sqlite_sessions, 120)

    response = _client(tmp_path, sqlite_sessions).get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert body["queued_jobs"] == 1
    assert 119 <= body["oldest_queued_job_age_seconds"] <= 130
    workers = {w["worker_id"]: w for w in body["workers"]}
    assert workers["worker-a"]["alive"] is True
    assert workers["worker-b"]["alive"] is False
    assert 3599 <= workers["worker-b"]["last_seen_seconds_ago"] <= 3610
    # The backend and device each worker runs the model on.
    assert (workers["worker-a"]["backend"], workers["worker-a"]["device"]) == (
        "jax",
        "cuda:0 (NVIDIA H200)",
    )


def test_healthz_shows_the_backend_and_device_a_worker_beats_with(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    device = "cuda:3 (NVIDIA H100 80GB HBM3)"
    beat(sqlite_sessions, "gpu-host:42", device, backend="torch")
    (worker,) = _client(tmp_path, sqlite_sessions).get("/healthz").json()["workers"]
    assert (worker["worker_id"], worker["backend"], worker["device"]) == (
        "gpu-host:42",
        "torch",
        device,
    )


def test_healthz_idle_site_without_workers_is_ok(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    response = _client(tmp_path, sqlite_sessions).get("/healthz")
    assert response.status_code == 200
    assert response.json()["oldest_queued_job_age_seconds"] is None


def test_healthz_is_503_when_jobs_wait_and_no_worker_is_alive(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    _heartbeat(sqlite_sessions, "worker-a", 3600)
    _queue_job(sqlite_sessions, 600)
    response = _client(tmp_path, sqlite_sessions).get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "stalled"


def test_healthz_gives_a_starting_worker_time_before_503(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    _queue_job(sqlite_sessions, 2)
    assert _client(tmp_path, sqlite_sessions).get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("supervision", "code", "status"),
    [
        (Supervision(expected=2, up=2, restarts=0), 200, "ok"),
        (Supervision(expected=2, up=2, restarts=5), 200, "ok"),  # steady since
        (Supervision(expected=1, up=0, restarts=0), 503, "degraded"),
        (Supervision(expected=2, up=1, restarts=3), 503, "degraded"),
    ],
)
def test_healthz_is_degraded_while_a_supervised_worker_is_down(
    sqlite_sessions: sessionmaker[Session], supervision: Supervision, code: int, status: str
) -> None:
    health = check_health(sqlite_sessions, 90.0, supervision)
    assert (health.status_code, health.body["status"]) == (code, status)
    assert health.body["worker_processes"] == {
        "expected": supervision.expected,
        "up": supervision.up,
        "restarts": supervision.restarts,
    }
    assert health.body["queued_jobs"] == 0  # nothing waits: it is the workers' own state


def test_healthz_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    broken = sessionmaker(create_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"))
    client = _client(tmp_path, broken)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["database"] == "error"
    # The worklist says so plainly instead of a stack trace.
    page = client.get("/")
    assert page.status_code == 503
    assert "database" in page.text
    metrics = {m.name: m for m in text_string_to_metric_families(client.get("/metrics").text)}
    assert metrics["triage_database_up"].samples[0].value == 0


# --- /metrics -----------------------------------------------------------------------


def test_metrics_count_rows_at_scrape_time(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    populate(sqlite_sessions)
    _heartbeat(sqlite_sessions, "worker-a", 1)
    response = _client(tmp_path, sqlite_sessions).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("triage_database_up") == 1
    assert value("triage_instances_received_total") == 5
    assert value("triage_queue_depth") == 1
    assert value("triage_jobs", state="running") == 1
    assert value("triage_workers_alive") == 1
    # Latencies: 4, 7, 12, 30, 31, 45 and 200 seconds.
    assert value("triage_job_latency_seconds_count") == 7
    assert value("triage_job_latency_seconds_sum") == pytest.approx(329.0)
    assert value("triage_job_latency_seconds_bucket", le="5.0") == 1
    assert value("triage_job_latency_seconds_bucket", le="10.0") == 2
    assert value("triage_job_latency_seconds_bucket", le="30.0") == 4
    assert value("triage_job_latency_seconds_bucket", le="60.0") == 6
    assert value("triage_job_latency_seconds_bucket", le="120.0") == 6
    assert value("triage_job_latency_seconds_bucket", le="300.0") == 7
    assert value("triage_job_latency_seconds_bucket", le="+Inf") == 7
    # Failed attempts: pacs once before it went through; ris 3 (retrying) + 10 (dead).
    assert value("triage_delivery_failures_total", destination="pacs") == 1
    assert value("triage_delivery_failures_total", destination="ris") == 13
    assert value("triage_deliveries", destination="pacs", state="sent") == 4
    assert value("triage_deliveries", destination="ris", state="dead") == 1
    assert value("triage_deliveries", destination="ris", state="retrying") == 1

    # A second scrape sees new rows: nothing is cached in this process.
    _queue_job(sqlite_sessions, 1)
    again = _client(tmp_path, sqlite_sessions).get("/metrics").text
    assert re.search(r"^triage_queue_depth 2\.0$", again, flags=re.M)


# --- the server thread --------------------------------------------------------------


def test_server_on_a_free_port_logs_neither_tokens_nor_accessions(
    tmp_path: Path,
    sqlite_sessions: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    populate(sqlite_sessions)
    _heartbeat(sqlite_sessions, "worker-a", 1)
    config = make_config(tmp_path, web={"port": 0, "token": "s3cret-token", "worklist_hours": None})
    caplog.set_level(logging.DEBUG)
    web = start_web(config, sqlite_sessions)
    try:
        assert web.port > 0
        base = f"http://127.0.0.1:{web.port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            assert json.load(response)["database"] == "ok"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/worklist", timeout=5)
        assert refused.value.code == 401
        request = urllib.request.Request(
            f"{base}/api/worklist", headers={"Authorization": "Bearer s3cret-token"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["rows"][0]["accession_number"] == "ACC-POS-HIGH"
        # urllib follows the redirect without keeping the cookie: the second hop is a 401.
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/?token=s3cret-token", timeout=5)
    finally:
        web.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", web.port), timeout=1).close()
    logged = capsys.readouterr().out + capsys.readouterr().err + caplog.text
    assert "web_started" in logged
    assert "s3cret-token" not in logged
    assert "ACC-" not in logged and "PID-SECRET" not in logged


def test_a_taken_port_is_an_error_that_says_so(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(tmp_path, web={"port": port})
        with pytest.raises(WebError, match=f"cannot listen on 127.0.0.1 port {port}"):
            start_web(config, sqlite_sessions)


def test_the_stylesheet_and_script_are_static_files_revalidated_on_every_load(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    client = _client(tmp_path, sqlite_sessions)
    static = Path(__file__).parents[2] / "triage" / "web" / "static"
    for name, media_type in (("worklist.css", "text/css"), ("worklist.js", "text/javascript")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media_type)
        assert response.headers["cache-control"] == "no-cache"
        assert response.text == (static / name).read_text()
        again = client.get(f"/static/{name}", headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304
    assert client.get("/static/../app.py").status_code == 404
