"""``triage monitor``: weekly flags, verdicts and PPV with its Wilson interval."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import make_config, open_db
from sqlalchemy import Column, Integer, MetaData, Table

from triage.cli import main
from triage.db import create_db_engine
from triage.db.models import (
    Decision,
    Feedback,
    Job,
    JobState,
    Result,
    Series,
    Study,
    Verdict,
)
from triage.monitor import FlagRecord, read_records, weekly_ppv

SHA = "ab" * 32


def at(day: str, hour: int = 12) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(hour=hour)


def constructed() -> list[FlagRecord]:
    """Three weeks of flags with known verdicts.

    2026-W10 (2 to 8 March): 12 flags, 7 confirmed, 3 rejected, 2 not reviewed, and an
    unflagged study confirmed as PE. 2026-W11: 3 confirmed, 1 rejected. 2026-W01, which
    starts on Monday 29 December 2025: 2 rejected, one on each side of New Year.
    """
    records = [FlagRecord(at("2026-03-02", 0), True, "confirmed")]  # Monday 00:00
    records += [FlagRecord(at("2026-03-04"), True, "confirmed") for _ in range(6)]
    records += [FlagRecord(at("2026-03-05"), True, "rejected") for _ in range(3)]
    records += [FlagRecord(at("2026-03-08", 23), True, None) for _ in range(2)]  # Sunday
    records += [FlagRecord(at("2026-03-06"), False, "confirmed")]
    records += [FlagRecord(at("2026-03-06"), False, None)]  # a negative nobody reviewed
    records += [FlagRecord(at("2026-03-09", 0), True, "confirmed") for _ in range(3)]
    records += [FlagRecord(at("2026-03-10"), True, "rejected")]
    records += [FlagRecord(at("2025-12-30"), True, "rejected")]
    records += [FlagRecord(at("2026-01-02"), True, "rejected")]
    return records


# Wilson score intervals with continuity correction, from R 4:
#   prop.test(x, n, correct = TRUE)$conf.int
R_PROP_TEST = {
    (7, 10): (0.3536707235, 0.9190521758),
    (3, 4): (0.2194265201, 0.9868088382),
    (0, 2): (0.0, 0.8021325442),
    (10, 16): (0.3587358696, 0.8371629664),
}


def test_ppv_and_its_wilson_interval_per_iso_week_match_hand_computed_values() -> None:
    weeks, total = weekly_ppv(constructed())
    got = [(w.week, w.start, w.flags, w.confirmed, w.rejected, w.unreviewed) for w in weeks]
    assert got == [
        ("2026-W01", dt.date(2025, 12, 29), 2, 0, 2, 0),
        ("2026-W10", dt.date(2026, 3, 2), 12, 7, 3, 2),
        ("2026-W11", dt.date(2026, 3, 9), 4, 3, 1, 0),
    ]
    for summary, (x, n) in zip([*weeks, total], [(0, 2), (7, 10), (3, 4), (10, 16)], strict=True):
        assert summary.ppv.estimate == pytest.approx(x / n)
        low, high = R_PROP_TEST[(x, n)]
        assert summary.ppv.low == pytest.approx(low, abs=1e-8)
        assert summary.ppv.high == pytest.approx(high, abs=1e-8)
    assert (total.flags, total.confirmed, total.rejected, total.unreviewed) == (18, 10, 6, 2)
    assert total.confirmed_unflagged == 1 and weeks[1].confirmed_unflagged == 1


def test_since_leaves_out_earlier_days_and_an_unreviewed_week_has_no_ppv() -> None:
    weeks, total = weekly_ppv(constructed(), since=dt.date(2026, 3, 9))
    assert [w.week for w in weeks] == ["2026-W11"]
    assert (total.confirmed, total.rejected) == (3, 1)
    weeks, _ = weekly_ppv([FlagRecord(at("2026-03-02"), True, None)])
    assert weeks[0].flags == 1 and math.isnan(weeks[0].ppv.estimate)
    assert weeks[0].to_dict()["ppv"] == {"estimate": None, "low": None, "high": None}
    with pytest.raises(ValueError, match="verdict"):
        FlagRecord(at("2026-03-02"), True, "maybe")  # type: ignore[arg-type]


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "triage.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "var")}))
    return path


def test_monitor_on_a_fresh_database_reports_no_flags_yet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Migration 0006 makes the feedback table, so a fresh database has it, empty.
    config = _config_file(tmp_path)
    assert main(["monitor", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].split()[:5] == ["total", "0", "0", "0", "0"]
    assert main(["monitor", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["feedback"] is True


def test_read_records_is_none_on_a_database_without_a_feedback_table(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    metadata = MetaData()
    Table("results", metadata, Column("id", Integer, primary_key=True))
    metadata.create_all(engine)
    assert read_records(engine) is None


def test_monitor_reads_the_latest_verdict_per_result_from_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(tmp_path)
    sessions = open_db(config)
    decisions = ["present", "present", "present", "absent", "absent"]
    with sessions.begin() as session:
        for i, decision in enumerate(decisions):
            study = Study(study_instance_uid=f"1.2.3.{i}")
            series = Series(study=study, series_instance_uid=f"1.2.3.{i}.1", modality="CT")
            job = Job(series=series, state=JobState.DONE)
            session.add_all([study, series, job])
            session.flush()
            session.add(
                Result(
                    id=i + 1,
                    job_id=job.id,
                    series_id=series.id,
                    decision=Decision(decision),
                    stack_probability=0.9 if decision == "present" else 0.1,
                    bundle_sha256=SHA,
                    created_at=at("2026-03-04"),
                )
            )
    # The rows as the study view's verdict form records them (triage.web.feedback).
    with sessions.begin() as session:
        session.add_all(
            [
                # Result 1 was first rejected, then confirmed: the later verdict counts.
                Feedback(
                    result_id=1,
                    verdict=Verdict.REJECTED,
                    who="web.token",
                    created_at=at("2026-03-04", 13),
                ),
                Feedback(
                    result_id=1,
                    verdict=Verdict.CONFIRMED,
                    who="web.token",
                    created_at=at("2026-03-04", 15),
                ),
                Feedback(
                    result_id=2,
                    verdict=Verdict.REJECTED,
                    who="web.token",
                    created_at=at("2026-03-05"),
                ),
                Feedback(
                    result_id=4,
                    verdict=Verdict.CONFIRMED,
                    who="web.token",
                    created_at=at("2026-03-05"),
                ),
            ]
        )
    engine = create_db_engine(config.database_url)
    records = read_records(engine)
    assert records is not None
    assert sorted((r.flagged, r.verdict or "") for r in records) == [
        (False, "confirmed"),
        (True, ""),
        (True, "confirmed"),
        (True, "rejected"),
    ]
    path = tmp_path / "triage.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(config.data_dir)}))
    assert main(["monitor", "--config", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [w["week"] for w in report["weeks"]] == ["2026-W10"]
    week = report["weeks"][0]
    assert (week["flags"], week["confirmed"], week["rejected"], week["unreviewed"]) == (3, 1, 1, 1)
    assert week["ppv"]["estimate"] == pytest.approx(0.5)
    assert main(["monitor", "--config", str(path), "--since", "2026-03-09"]) == 0
    text = capsys.readouterr().out
    assert "2026-W10" not in text and text.splitlines()[-1].startswith("total")
