"""The Storage SCP over real associations on localhost: success, idempotency, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dicom_factory import ct_slice, write_series
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from triage.db import Instance, Series, Study


def _assoc(port: int, calling: str = "TESTSCU", contexts: list[str] | None = None):
    ae = AE(ae_title=calling)
    for uid in contexts or [CTImageStorage]:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
    assert assoc.is_established
    return assoc


def test_store_writes_file_and_row_before_success(start_receiver, db_url: str) -> None:
    rx = start_receiver(db_url)
    ds = ct_slice("1.2.3.4", "1.2.3.4.5", 0)
    ds.StudyDescription = "CT PULMONARY ANGIOGRAM"
    assoc = _assoc(rx.port)
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000
    path = rx.spool / "1.2.3.4" / "1.2.3.4.5" / f"{ds.SOPInstanceUID}.dcm"
    assert path.is_file()
    stored = dcmread(path)
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert stored.pixel_array.shape == (32, 32)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    with rx.sessions() as s:
        inst = s.scalar(select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID))
        assert inst is not None
        assert inst.file_path == f"1.2.3.4/1.2.3.4.5/{ds.SOPInstanceUID}.dcm"
        assert inst.transfer_syntax_uid == ExplicitVRLittleEndian
        assert inst.slice_thickness == 3.0
        assert inst.rows == 32
        study = s.scalar(select(Study))
        assert study is not None
        assert study.accession_number == ds.AccessionNumber  # kept for the worklist
        assert study.patient_name == str(ds.PatientName) and study.patient_id == ds.PatientID
        assert study.study_description == "CT PULMONARY ANGIOGRAM"
    # No temp file is left beside it.
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_resent_instance_is_idempotent(start_receiver, db_url: str) -> None:
    rx = start_receiver(db_url)
    ds = ct_slice("1.2.3.4", "1.2.3.4.6", 0)
    assoc = _assoc(rx.port)
    assert assoc.send_c_store(ds).Status == 0x0000
    ds.SeriesDescription = "CTPA 3mm resent"
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    with rx.sessions() as s:
        assert len(s.scalars(select(Instance)).all()) == 1
        series = s.scalar(select(Series))
        assert series is not None and series.instance_count == 1
        assert series.series_description == "CTPA 3mm resent"
    files = list((rx.spool / "1.2.3.4" / "1.2.3.4.6").iterdir())
    assert len(files) == 1
    assert dcmread(files[0]).SeriesDescription == "CTPA 3mm resent"


def test_echo(start_receiver) -> None:
    rx = start_receiver()
    assoc = _assoc(rx.port)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_every_storage_class_is_accepted(start_receiver) -> None:
    """A PACS forwards MR, SR and other objects in a study; none may fail."""
    rx = start_receiver()
    ds = ct_slice("1.2.3.7", "1.2.3.7.1", 0, modality="MR")
    ds.SOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    assoc = _assoc(rx.port, contexts=[MRImageStorage])
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()


def _nothing_stored(rx) -> None:
    with rx.sessions() as s:
        assert s.scalars(select(Instance)).all() == []
    leftovers = [p for p in rx.spool.rglob("*") if p.is_file()]
    assert leftovers == []


def test_invalid_uid_is_refused_and_nothing_written(start_receiver, caplog) -> None:
    rx = start_receiver()
    ds = ct_slice("1.2.3.4", "../../../etc", 0)
    assoc = _assoc(rx.port)
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xC000
    assert "invalid UID" in status.ErrorComment
    _nothing_stored(rx)


def test_overlong_uid_is_refused(start_receiver) -> None:
    rx = start_receiver()
    ds = ct_slice("1." + "2" * 70, "1.2.3", 0)
    assoc = _assoc(rx.port)
    assert assoc.send_c_store(ds).Status == 0xC000
    assoc.release()
    _nothing_stored(rx)


class _FakeEvent:
    """The parts of a pynetdicom C-STORE event that the handler reads."""

    def __init__(self, data: bytes, sop_instance_uid: str, sop_class_uid: str = CTImageStorage):
        from types import SimpleNamespace

        self._data = data
        self.request = SimpleNamespace(
            AffectedSOPInstanceUID=sop_instance_uid, AffectedSOPClassUID=sop_class_uid
        )
        self.assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="TESTSCU"))

    def encoded_dataset(self) -> bytes:
        return self._data


def _file_bytes(ds) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _target(rx):
    from triage.receive.recorder import InstanceRecorder
    from triage.receive.scp import StoreTarget

    return StoreTarget(rx.spool, 0, InstanceRecorder(rx.sessions))


def test_sop_instance_mismatch_is_refused(start_receiver) -> None:
    from triage.receive.scp import handle_store

    rx = start_receiver()
    ds = ct_slice("1.2.3.4", "1.2.3.4.8", 0)
    event = _FakeEvent(_file_bytes(ds), sop_instance_uid="1.2.3.999")
    status = handle_store(event, _target(rx))  # type: ignore[arg-type]
    assert status.Status == 0xA900
    # The same bytes with the right request UID are stored.
    event = _FakeEvent(_file_bytes(ds), sop_instance_uid=ds.SOPInstanceUID)
    assert handle_store(event, _target(rx)) == 0x0000  # type: ignore[arg-type]


def test_unparseable_dataset_is_refused(start_receiver) -> None:
    from triage.receive.scp import handle_store

    rx = start_receiver()
    ds = ct_slice("1.2.3.4", "1.2.3.4.9", 0)
    raw = _file_bytes(ds)
    from io import BytesIO

    group_length = dcmread(BytesIO(raw)).file_meta.FileMetaInformationGroupLength
    meta_end = 132 + 12 + int(group_length)
    broken = raw[:meta_end] + b"\x08\x00\x18\x00UI\xff\xffgarbage"
    status = handle_store(_FakeEvent(broken, ds.SOPInstanceUID), _target(rx))  # type: ignore[arg-type]
    assert status.Status == 0xC210
    status = handle_store(_FakeEvent(b"not dicom at all", ds.SOPInstanceUID), _target(rx))  # type: ignore[arg-type]
    assert status.Status == 0xC210
    _nothing_stored(rx)


def test_low_disk_space_is_refused_with_out_of_resources(start_receiver) -> None:
    rx = start_receiver(receiver={"min_free_disk_mb": 10**12})
    assoc = _assoc(rx.port)
    status = assoc.send_c_store(ct_slice("1.2.3.4", "1.2.3.4.10", 0))
    assert status.Status == 0xA700
    # The daemon keeps serving on the same association.
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    _nothing_stored(rx)


def test_write_failure_is_refused_with_out_of_resources(start_receiver, monkeypatch) -> None:
    import errno

    import triage.storage.spool

    rx = start_receiver()

    def full(*_a: object, **_k: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(triage.storage.spool.os, "write", full)
    assoc = _assoc(rx.port)
    status = assoc.send_c_store(ct_slice("1.2.3.4", "1.2.3.4.11", 0))
    monkeypatch.undo()
    assert status.Status == 0xA700
    assert "disk is full" in status.ErrorComment
    ok = assoc.send_c_store(ct_slice("1.2.3.4", "1.2.3.4.11", 1))
    assoc.release()
    assert ok.Status == 0x0000
    with rx.sessions() as s:
        assert len(s.scalars(select(Instance)).all()) == 1
    assert not [p for p in rx.spool.rglob("*.tmp")]


def test_unknown_calling_aet_is_rejected(start_receiver) -> None:
    rx = start_receiver(receiver={"allowed_calling_aets": ["PACS1"]})
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", rx.port, ae_title="TRIAGE")
    assert assoc.is_rejected
    ae2 = AE(ae_title="PACS1")
    ae2.add_requested_context(Verification)
    assoc2 = ae2.associate("127.0.0.1", rx.port, ae_title="TRIAGE")
    assert assoc2.is_established
    assert assoc2.send_c_echo().Status == 0x0000
    assoc2.release()


def test_concurrent_associations_all_land(start_receiver, db_url: str, tmp_path: Path) -> None:
    import threading

    rx = start_receiver(db_url)
    study = "1.2.3.4.100"
    folders = []
    for k in range(3):
        _, _, files = write_series(tmp_path / f"s{k}", 10, study_uid=study)
        folders.append(files)
    failures: list[int] = []

    def send(files: list[Path]) -> None:
        assoc = _assoc(rx.port)
        for f in files:
            st = assoc.send_c_store(f)
            if st.Status != 0:
                failures.append(st.Status)
        assoc.release()

    threads = [threading.Thread(target=send, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    with rx.sessions() as s:
        assert len(s.scalars(select(Instance)).all()) == 30
        assert len(s.scalars(select(Series)).all()) == 3
        assert len(s.scalars(select(Study)).all()) == 1


@pytest.mark.parametrize("max_pdu", [0, 16384])
def test_pdu_sizes(start_receiver, max_pdu: int) -> None:
    rx = start_receiver(receiver={"max_pdu": max_pdu})
    ds = ct_slice("1.2.3.4", "1.2.3.4.12", 0, rows=256, columns=256)
    assoc = _assoc(rx.port)
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert len(list(rx.spool.rglob("*.dcm"))) == 1


@pytest.mark.parametrize(
    "syntax",
    ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"],
    ids=["rle", "jpeg-ls", "jpeg2000"],
)
def test_compressed_transfer_syntaxes_are_stored_as_sent(start_receiver, syntax: str) -> None:
    import numpy as np

    rx = start_receiver()
    ds = ct_slice("1.2.3.4", "1.2.3.4.13", 0, rows=64, columns=64)
    ds.PixelData = (np.arange(64 * 64, dtype=np.int16).reshape(64, 64) - 1000).tobytes()
    original = ds.pixel_array.copy()
    ds.compress(syntax)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", rx.port, ae_title="TRIAGE")
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    (path,) = rx.spool.rglob("*.dcm")
    stored = dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == syntax
    # Later stages decode it with the installed plugins; lossless means identical pixels.
    assert np.array_equal(stored.pixel_array, original)


def test_stored_file_meta_describes_the_received_instance(start_receiver) -> None:
    """The receiver writes the PS3.10 header itself; a DICOM reader must find it right."""
    rx = start_receiver()
    ds = ct_slice("1.2.3.4", "1.2.3.4.14", 0)
    assoc = _assoc(rx.port, calling="PACS_A")
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    (path,) = rx.spool.rglob("*.dcm")
    raw = path.read_bytes()
    assert raw[:132] == b"\x00" * 128 + b"DICM"
    meta = dcmread(path).file_meta
    assert meta.MediaStorageSOPClassUID == CTImageStorage
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.SourceApplicationEntityTitle == "PACS_A"
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    # The group length covers exactly the meta elements that follow it.
    group_length = int.from_bytes(raw[140:144], "little")
    assert raw[144 + group_length : 146 + group_length] == b"\x08\x00"  # next is group 0008


# Issue 12, items 4 and 5: what a broken sender sends, sent as is over a real association.


def _dataset_bytes(ds) -> bytes:
    """The dataset of ``ds`` (Explicit VR Little Endian), without preamble or File Meta."""
    from io import BytesIO

    raw = _file_bytes(ds)
    group_length = dcmread(BytesIO(raw)).file_meta.FileMetaInformationGroupLength
    return raw[132 + 12 + int(group_length) :]


def _send_raw(
    port: int, tmp_path: Path, body: bytes, sop_instance_uid: str, monkeypatch
) -> tuple[int, float]:
    """Send ``body`` byte for byte as a C-STORE dataset; the status and seconds to answer.

    pynetdicom sends a file's dataset without parsing it when asked to send in chunks,
    with the request's UIDs taken from the file's meta: so a sender can be broken here
    as a real one is.
    """
    import time

    from pynetdicom import _config

    from triage.receive.part10 import file_header

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    path = tmp_path / "outgoing.dcm"
    path.write_bytes(file_header(CTImageStorage, sop_instance_uid, ExplicitVRLittleEndian) + body)
    ae = AE(ae_title="TESTSCU")
    ae.dimse_timeout = 15
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
    assert assoc.is_established
    start = time.monotonic()
    status = assoc.send_c_store(path)
    elapsed = time.monotonic() - start
    if assoc.is_established:
        assoc.release()
    return (int(status.Status) if "Status" in status else -1), elapsed


def _pixel_offset(body: bytes) -> int:
    return body.index(b"\xe0\x7f\x10\x00OW")


@pytest.mark.parametrize("damage", ["cut_in_half", "length_fffffffe", "pixel_data_2_gib"])
def test_truncated_or_corrupt_dataset_gets_a_failure_and_nothing_is_spooled(
    start_receiver, tmp_path: Path, monkeypatch, damage: str
) -> None:
    import struct

    rx = start_receiver()
    ds = ct_slice("1.2.3.4", "1.2.3.4.20", 0, rows=128, columns=128)
    body = _dataset_bytes(ds)
    px = _pixel_offset(body)
    if damage == "cut_in_half":  # inside Pixel Data
        body = body[: len(body) // 2]
        assert len(body) > px + 12
    elif damage == "length_fffffffe":  # an OB element whose length runs past the end
        body = body[:px] + b"\x09\x00\x10\x00LO\x04\x00ACME"
        body += b"\x09\x00\x00\x10OB\x00\x00" + struct.pack("<I", 0xFFFFFFFE) + b"abcd"
    else:  # Pixel Data claiming 2 GiB, with 100 bytes sent
        body = body[:px] + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", 2**31) + bytes(100)
    status, _ = _send_raw(rx.port, tmp_path, body, ds.SOPInstanceUID, monkeypatch)
    assert status == 0xC210
    _nothing_stored(rx)


def test_pixel_data_of_the_wrong_size_gets_a_failure(start_receiver, tmp_path, monkeypatch) -> None:
    rx = start_receiver()
    ds = ct_slice("1.2.3.4", "1.2.3.4.21", 0, rows=64, columns=64)
    ds.Rows = 65  # 64 × 64 pixels sent, 65 × 64 announced
    status, _ = _send_raw(rx.port, tmp_path, _dataset_bytes(ds), ds.SOPInstanceUID, monkeypatch)
    assert status == 0xC210
    _nothing_stored(rx)
    # The intact instance is stored.
    ds.Rows = 64
    status, _ = _send_raw(rx.port, tmp_path, _dataset_bytes(ds), ds.SOPInstanceUID, monkeypatch)
    assert status == 0x0000


def test_empty_affected_sop_instance_uid_gets_a_failure_response(
    start_receiver, tmp_path: Path, monkeypatch
) -> None:
    rx = start_receiver()
    ds = ct_slice("1.2.3.4", "1.2.3.4.22", 0)
    status, elapsed = _send_raw(rx.port, tmp_path, _dataset_bytes(ds), "", monkeypatch)
    assert status == 0xA900  # an answer, not silence until the sender's timeout
    assert elapsed < 5
    _nothing_stored(rx)


def test_dataset_without_sop_instance_uid_is_not_stored_under_the_request_uid(
    start_receiver, tmp_path: Path, monkeypatch
) -> None:
    rx = start_receiver()
    ds = ct_slice("1.2.3.4", "1.2.3.4.23", 0)
    request_uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    status, _ = _send_raw(rx.port, tmp_path, _dataset_bytes(ds), request_uid, monkeypatch)
    assert status != 0x0000
    assert status in (0xA900, 0xC210)
    _nothing_stored(rx)


@pytest.mark.parametrize("tag", [b"\x20\x00\x0d\x00", b"\x20\x00\x0e\x00"], ids=["study", "series"])
def test_uid_with_a_trailing_newline_is_refused(
    start_receiver, tmp_path: Path, monkeypatch, tag: bytes
) -> None:
    """A UID pattern ending in ``$`` matched "1.2.3.4\\n" (pydicom strips it, so bytes)."""
    rx = start_receiver()
    ds = ct_slice("1.2.3.44", "1.2.3.44", 0)
    body = _dataset_bytes(ds)
    element = tag + b"UI\x08\x001.2.3.44"
    assert body.count(element) == 1
    body = body.replace(element, tag + b"UI\x08\x001.2.3.4\n")
    status, _ = _send_raw(rx.port, tmp_path, body, ds.SOPInstanceUID, monkeypatch)
    assert status == 0xC000
    _nothing_stored(rx)
