"""``triage status``: a series' real state after its job, and where each SR and KOS went."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from dispatch_helpers import Received, dispatch_config, seed_result, start_store_scp
from support import free_port, open_db

from triage.cli import main
from triage.db import Series, SeriesState
from triage.dispatch import dispatch_due


def _destinations(pacs_port: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "pacs",
            "type": "dicom",
            "ae_title": "PACS",
            "host": "127.0.0.1",
            "port": pacs_port,
        },
        # Nothing listens there: the ORU is retried.
        {"name": "ris", "type": "hl7", "host": "127.0.0.1", "port": free_port()},
    ]


def test_status_shows_the_job_state_of_a_queued_series_and_where_sr_and_kos_went(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    received = Received()
    scp = start_store_scp(0, received)
    try:
        destinations = _destinations(scp.server_address[1])
        config = dispatch_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}", destinations)
        sessions = open_db(config)
        positive = seed_result(sessions, config, ["pacs", "ris"])
        negative = seed_result(sessions, config, ["pacs"], decision="absent")
        with sessions.begin() as session:
            for series in session.query(Series):
                series.state = SeriesState.QUEUED  # as the completeness sweep leaves it
        assert dispatch_due(sessions, config) == 3
    finally:
        scp.shutdown()
    capsys.readouterr()  # the dispatcher's log lines
    config_file = tmp_path / "triage.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(config.data_dir),
                "database": {"url": config.database_url},
                "destinations": destinations,
            }
        )
    )

    assert main(["status", "--json", "--config", str(config_file)]) == 0
    status = json.loads(capsys.readouterr().out)
    by_study = {s["study_instance_uid"]: s["series"][0] for s in status["studies"]}
    pos, neg = by_study[positive.study_instance_uid], by_study[negative.study_instance_uid]
    assert (pos["state"], pos["series_state"], pos["job"]["state"]) == ("done", "queued", "done")
    assert neg["state"] == "done"
    pacs, ris = pos["result"]["deliveries"]
    assert (pacs["destination"], pacs["type"], pacs["state"]) == ("pacs", "dicom", "sent")
    assert pacs["sent_at"] is not None
    assert pacs["objects"] == [
        f"SR {positive.sr_sop_instance_uid}",
        f"KOS {positive.kos_sop_instance_uid}",
    ]
    assert (ris["destination"], ris["state"], ris["sent_at"]) == ("ris", "retrying", None)
    assert ris["objects"] == ["ORU^R01"]
    (neg_pacs,) = neg["result"]["deliveries"]
    assert neg_pacs["objects"] == [f"SR {negative.sr_sop_instance_uid}"]  # no KOS for a negative

    assert main(["status", "--config", str(config_file)]) == 0
    text = capsys.readouterr().out
    assert "queued" not in text.split("jobs:")[1]  # no series or job shows queued
    # Each SR and KOS line sits under its own study, after the delivery that took it.
    block = text.split(f"study {positive.study_instance_uid}")[1].split("\nstudy ")[0]
    lines = block.splitlines()
    sent = next(i for i, line in enumerate(lines) if line.strip().startswith("delivery pacs:"))
    assert f"sent at {pacs['sent_at']}" in lines[sent]
    assert lines[sent + 1].strip() == f"SR {positive.sr_sop_instance_uid}"
    assert lines[sent + 2].strip() == f"KOS {positive.kos_sop_instance_uid}"
    assert "; done  job " in block
