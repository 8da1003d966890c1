"""A frozen PACS (Debian's Orthanc, SIGSTOPped: its port accepts and never answers) must
not hold back the RIS flag of a positive result, and gets its SR and KOS once it thaws.

The result is put in the running daemon's database as a worker leaves it, and the daemon
is told with DELIVERIES_STORED (SIGUSR2), as a worker tells it; everything after that is
the daemon's own.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "triage"))

from daemon_proc import Daemon
from dispatch_helpers import MLLPListener, delivery, seed_result, segments
from support import free_port
from test_pacs_round_trip import ORTHANC, Orthanc, _wait

from triage.config import load_config
from triage.db import DeliveryState, create_db_engine, session_factory
from triage.supervisor import DELIVERIES_STORED


@pytest.mark.timeout(300)
def test_a_frozen_pacs_does_not_delay_the_oru(tmp_path: Path) -> None:
    assert Path(ORTHANC).exists(), "Orthanc is missing: apt-get install orthanc"
    ris = MLLPListener()
    triage_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", triage_port).start()
    (tmp_path / "triage").mkdir()
    daemon = Daemon(
        tmp_path / "triage",
        receiver={"port": triage_port},
        dispatch={"backoff_seconds": 1, "max_backoff_seconds": 2, "sweep_interval_seconds": 60},
        destinations=[
            {
                "name": "pacs",
                "type": "dicom",
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
            },
            {"name": "ris", "type": "hl7", "host": "127.0.0.1", "port": ris.port},
        ],
    )
    daemon.port = triage_port
    assert orthanc.proc is not None
    try:
        daemon.start()
        assert daemon.proc is not None
        config = load_config(daemon.config_path)
        sessions = session_factory(create_db_engine(config.database_url))  # migrated by serve
        os.kill(orthanc.proc.pid, signal.SIGSTOP)

        # The PACS delivery is the older row: a serial dispatcher would send it first
        # and wait out its 30 s association timeout before the ORU.
        seeded = seed_result(sessions, config, ["pacs", "ris"])
        os.kill(daemon.proc.pid, DELIVERIES_STORED)
        _wait(lambda: ris.messages, 10, "the ORU while the PACS is frozen")
        assert segments(ris.messages[0])["MSH"][0][9].startswith("ORU^R01")
        assert delivery(sessions, seeded.deliveries["ris"]).state == DeliveryState.SENT
        pacs = delivery(sessions, seeded.deliveries["pacs"])
        assert (pacs.state, pacs.attempts) == (DeliveryState.PENDING, 0)  # still waiting

        # A second positive while the PACS is still frozen is flagged at once too.
        second = seed_result(sessions, config, ["pacs", "ris"])
        os.kill(daemon.proc.pid, DELIVERIES_STORED)
        _wait(lambda: len(ris.messages) == 2, 10, "the second ORU")

        # The PACS thaws: its SRs and the KOSes arrive, nothing was lost.
        os.kill(orthanc.proc.pid, signal.SIGCONT)
        os.kill(daemon.proc.pid, DELIVERIES_STORED)

        def all_in_pacs() -> bool:
            os.kill(daemon.proc.pid, DELIVERIES_STORED)  # no waiting for the 60 s sweep
            return all(
                delivery(sessions, s.deliveries["pacs"]).state == DeliveryState.SENT
                for s in (seeded, second)
            )

        _wait(all_in_pacs, 120, "the SRs and KOSes to reach the thawed PACS")
        assert len(orthanc.get("/instances")) == 4
    finally:
        os.kill(orthanc.proc.pid, signal.SIGCONT)
        daemon.stop()
        orthanc.stop()
        ris.close()
