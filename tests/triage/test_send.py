"""``triage send`` over real sockets: one line per failed association, non-DICOM skipped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dicom_factory import write_series
from pydicom.uid import CTImageStorage
from pynetdicom import AE, evt
from pynetdicom.events import Event
from support import free_port, wait_for_port

from triage.cli import main


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """Three CT slices and the train.csv that sits beside a synthetic data set."""
    folder = tmp_path / "study"
    write_series(folder, 3)
    (folder / "train.csv").write_text("StudyInstanceUID,SeriesInstanceUID,pe_present_on_image\n")
    return folder


def start_scp(received: list[str], **ae_options: object) -> tuple[AE, int]:
    ae = AE(ae_title="TRIAGE")
    for key, value in ae_options.items():
        setattr(ae, key, value)
    ae.add_supported_context(CTImageStorage)

    def handle_store(event: Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    port = free_port()
    ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
    )
    wait_for_port(port, None)
    return ae, port


@pytest.fixture
def scp() -> Iterator[tuple[list[str], int]]:
    received: list[str] = []
    ae, port = start_scp(received)
    yield received, port
    ae.shutdown()


@pytest.fixture
def picky_scp() -> Iterator[tuple[list[str], int]]:
    """An SCP that accepts only the calling AE title ALLOWED."""
    received: list[str] = []
    ae, port = start_scp(received, require_calling_aet=["ALLOWED"])
    yield received, port
    ae.shutdown()


def send(capsys: pytest.CaptureFixture[str], port: int, *args: str) -> tuple[int, str, str]:
    code = main(["send", "--host", "127.0.0.1", "--port", str(port), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_closed_port_is_reported_once_as_connection_refused(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = send(capsys, free_port(), str(study))
    assert code == 1
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, err
    assert "connection refused" in failed[0] and "3 files not sent" in failed[0]
    assert "sent 0, failed 3" in out


def test_a_rejected_calling_ae_title_is_reported_once_with_the_peers_reason(
    study: Path, picky_scp: tuple[list[str], int], capsys: pytest.CaptureFixture[str]
) -> None:
    received, port = picky_scp
    code, _, err = send(capsys, port, "--calling-aet", "INTRUDER", str(study))
    assert code == 1 and received == []
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, err
    assert "TRIAGE@127.0.0.1" in failed[0] and "rejected the association" in failed[0]
    assert "Calling AE title not recognised" in failed[0]
    # The same SCP takes the files from the title it knows.
    code, _, _ = send(capsys, port, "--calling-aet", "ALLOWED", str(study))
    assert code == 0 and len(received) == 3


def test_non_dicom_files_are_skipped_with_one_note_not_a_failure(
    study: Path, scp: tuple[list[str], int], capsys: pytest.CaptureFixture[str]
) -> None:
    received, port = scp
    (study / "notes.txt").write_text("not an image")
    code, out, err = send(capsys, port, str(study))
    assert code == 0, err
    assert len(received) == 3
    assert "FAILED" not in err
    notes = [line for line in out.splitlines() if line.startswith("skipped")]
    assert notes == ["skipped 2 non-DICOM file(s): notes.txt, train.csv"]
    assert "sent 3, failed 0" in out
