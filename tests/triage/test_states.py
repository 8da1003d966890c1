"""The three state machines: each transition happens once, only from its own states,
and says so; and nothing outside ``triage/states`` writes a ``state`` column."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker
from support import make_config, open_db

from triage.db.models import (
    Decision,
    Delivery,
    DeliveryState,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    Study,
    utcnow,
)
from triage.states import delivery as delivery_state
from triage.states import job as job_state
from triage.states import series as series_state

TRIAGE = Path(__file__).resolve().parents[2] / "triage"


def _db(tmp_path: Path, db_url: str) -> sessionmaker[Session]:
    return open_db(make_config(tmp_path, db_url))


def _series(sessions: sessionmaker[Session], received_ago: float = 60.0) -> int:
    with sessions() as session:
        study = Study(study_instance_uid="1.2.3")
        series = Series(
            study=study,
            series_instance_uid="1.2.3.4",
            last_received_at=utcnow() - timedelta(seconds=received_ago),
        )
        session.add(series)
        session.commit()
        return series.id


def _state(sessions: sessionmaker[Session], model: type, row_id: int) -> object:
    with sessions() as session:
        return session.get(model, row_id).state  # type: ignore[union-attr]


def test_series_goes_receiving_complete_queued_and_back_only_when_it_may(
    tmp_path: Path, db_url: str
) -> None:
    sessions = _db(tmp_path, db_url)
    series_id = _series(sessions)
    now = utcnow()
    with sessions() as session, session.begin():
        # Something arrived after the quiet point: not complete yet.
        assert not series_state.complete(session, series_id, now - timedelta(hours=1), now)
        assert series_state.complete(session, series_id, now, now)
        assert not series_state.complete(session, series_id, now, now)
        assert series_state.reopen(session, series_id)
    assert _state(sessions, Series, series_id) == SeriesState.RECEIVING
    with sessions() as session, session.begin():
        assert not series_state.queue(session, series_id)  # receiving, not complete
        assert series_state.complete(session, series_id, now, now)
        assert series_state.queue(session, series_id)
        assert not series_state.skip(session, series_id, "already queued")
    assert _state(sessions, Series, series_id) == SeriesState.QUEUED
    with sessions() as session, session.begin():
        assert series_state.reopen(session, series_id)
        assert not series_state.reopen(session, series_id)  # it is receiving already
        assert series_state.complete(session, series_id, now, now)
        assert series_state.skip(session, series_id, "modality MR")
        assert not series_state.queue(session, series_id)
    with sessions() as session:
        series = session.get(Series, series_id)
        assert series is not None
        assert (series.state, series.skip_reason) == (SeriesState.SKIPPED, "modality MR")


def test_a_job_finishes_once_and_a_lost_claim_changes_nothing(tmp_path: Path, db_url: str) -> None:
    sessions = _db(tmp_path, db_url)
    series_id = _series(sessions)
    now = utcnow()
    with sessions() as session, session.begin():
        assert series_state.complete(session, series_id, now, now)
        assert series_state.queue(session, series_id)
        job_id = job_state.enqueue(session, series_id)
    claim = job_state.claim_job(sessions, "host:1", 60)
    assert claim is not None and claim.job_id == job_id
    with sessions() as session, session.begin():
        assert job_state.confirm_held(session, claim)
        assert job_state.finish_undetermined(session, claim, "4 slices")
        # Finished: the claim no longer holds, so nothing more happens.
        assert not job_state.confirm_held(session, claim)
        assert not job_state.finish_done(session, claim)
        assert not job_state.return_unanalysed(session, claim)
    assert job_state.release_claim(sessions, claim, error="late") is None
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.state, job.reason, job.error) == (JobState.UNDETERMINED, "4 slices", None)

    # The series was reopened and completed again: the job starts over, attempts reset.
    with sessions() as session, session.begin():
        assert job_state.requeue_for_series(session, job_id)
    again = job_state.claim_job(sessions, "host:2", 60)
    assert again is not None and again.attempts == 1
    with sessions() as session, session.begin():
        assert job_state.return_unanalysed(session, again)
        assert not job_state.return_unanalysed(session, again)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.state, job.attempts) == (JobState.QUEUED, 0)
    third = job_state.claim_job(sessions, "host:3", 60)
    assert third is not None
    with sessions() as session, session.begin():
        assert job_state.requeue_all_running(session) == 1
        assert job_state.requeue_all_running(session) == 0
        assert not job_state.finish_done(session, third)
    assert _state(sessions, Job, job_id) == JobState.QUEUED


def test_a_delivery_attempt_ends_once_and_only_dead_ones_revive(
    tmp_path: Path, db_url: str
) -> None:
    sessions = _db(tmp_path, db_url)
    series_id = _series(sessions)
    with sessions() as session, session.begin():
        job_id = job_state.enqueue(session, series_id)
        result = Result(job_id=job_id, series_id=series_id, decision=Decision.PRESENT)
        session.add(result)
        session.flush()
        first, second = (
            Delivery(result_id=result.id, destination="pacs"),
            Delivery(result_id=result.id, destination="ris"),
        )
        session.add_all([first, second])
        session.flush()
        ids = first.id, second.id
    now = utcnow()
    with sessions() as session, session.begin():
        assert delivery_state.retry_later(session, ids[0], 1, "refused", now)
        assert delivery_state.sent(session, ids[0], 2)
        assert not delivery_state.retry_later(session, ids[0], 3, "late", now)
        assert not delivery_state.give_up(session, ids[0], 3, "late")
        assert delivery_state.give_up(session, ids[1], 1, "AR: unknown order")
        assert not delivery_state.sent(session, ids[1], 2)
        assert delivery_state.revive(session, ids, now) == 1
        assert delivery_state.revive(session, ids, now) == 0
    with sessions() as session:
        rows = {d.id: d for d in session.query(Delivery)}
        assert (rows[ids[0]].state, rows[ids[0]].attempts) == (DeliveryState.SENT, 2)
        assert rows[ids[0]].last_error is None and rows[ids[0]].sent_at is not None
        assert (rows[ids[1]].state, rows[ids[1]].attempts) == (DeliveryState.PENDING, 0)
        # Kept until the next attempt, so status still says why it died.
        assert rows[ids[1]].last_error == "AR: unknown order"


def _state_writes(path: Path) -> list[str]:
    """Where ``path`` assigns ``<x>.state`` or passes ``state=`` to a row or an UPDATE."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [
                f"{path.name}:{node.lineno}"
                for t in targets
                if isinstance(t, ast.Attribute) and t.attr == "state"
            ]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name not in {"values", "Series", "Job", "Delivery", "update"}:
                continue
            keys = [k.arg for k in node.keywords]
            keys += [
                k.value
                for arg in node.args
                if isinstance(arg, ast.Dict)
                for k in arg.keys
                if isinstance(k, ast.Constant)
            ]
            if "state" in keys:
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_nothing_outside_the_state_modules_writes_a_state_column() -> None:
    writes = [
        where
        for path in sorted(TRIAGE.rglob("*.py"))
        if "states" not in path.relative_to(TRIAGE).parts
        and "migrations" not in path.relative_to(TRIAGE).parts
        for where in _state_writes(path)
    ]
    assert writes == []
    # The check itself finds the writes it is meant to find.
    assert len(_state_writes(TRIAGE / "states" / "job.py")) >= 5
