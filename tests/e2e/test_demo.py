"""`triage demo`: the newcomer's one command, with the shipped demo bundle and Orthanc."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(600)
def test_triage_demo_puts_the_study_with_emboli_first() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "triage.cli", "demo"],
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
    # Both SRs, and the positive study's KOS, landed in the PACS.
    landed = text.split("Key Object Selections in the PACS:")[1].split("stopped;")[0]
    kinds = sorted(line.split()[0] for line in landed.splitlines() if line.strip())
    assert kinds == ["KO", "SR", "SR"], text
