"""`triage demo`: the newcomer's one command, with the shipped demo bundle and Orthanc."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(600)
def test_triage_demo_puts_the_study_with_emboli_first() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "triage.cli", "demo", "--no-keep-running"],
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "NOT FOR CLINICAL USE" in text
    assert "receiving PACS: Orthanc" in text
    # The worklist: the study with emboli flagged and first, the other not flagged.
    rows = [line for line in text.splitlines() if " done " in line]
    assert len(rows) == 2, text
    assert "PE suspected" in rows[0] and "PE suspected" not in rows[1], text
    # Each study's SR landed in the PACS, and the positive's KOS and summary images, each
    # line under its study.
    landed = text.split("summary images in the PACS:")[1].split("stopped;")[0]
    studies = landed.split("  study ")[1:]
    assert [s.split()[0:2] for s in studies] == [["with", "emboli"], ["without", "emboli"]], text
    kinds = [
        sorted(line.split()[0] for line in s.splitlines()[1:] if line.strip()) for s in studies
    ]
    assert kinds == [["KO", "OT", "SR"], ["SR"]], text
    assert "http://" not in landed  # the servers are stopped: no URL to a dead server
