"""``triage send``: a C-STORE client over files and folders, for demos and tests."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.presentation import build_context

from triage.errors import TriageError

_MAX_CONTEXTS = 128  # the most presentation contexts one association may propose


@dataclass
class SendResult:
    """What happened to each file: sent, or failed with a reason."""

    sent: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files under ``paths`` (folders recursively, in sorted order)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise TriageError(f"{path} does not exist; give DICOM files or folders")


def send_files(
    paths: Iterable[Path],
    host: str,
    port: int,
    calling_aet: str = "TRIAGESCU",
    called_aet: str = "TRIAGE",
    max_pdu: int = 0,
) -> SendResult:
    """Send every DICOM file under ``paths`` with C-STORE, each in its own transfer syntax.

    Files that are not DICOM are reported as failures, not sent.
    """
    result = SendResult()
    files: list[tuple[Path, str, str]] = []
    for path in iter_files(paths):
        try:
            ds = dcmread(path, stop_before_pixels=True)
            files.append((path, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
        except (InvalidDicomError, AttributeError, OSError, ValueError, EOFError) as err:
            result.failures.append((path, f"not a DICOM file: {err}"))
    if not files:
        return result
    pairs = sorted({(sop, ts) for _, sop, ts in files})
    # Propose one context per (SOP class, transfer syntax); split into associations of
    # at most 128 contexts if a folder holds more kinds than one association can carry.
    for start in range(0, len(pairs), _MAX_CONTEXTS):
        chunk = set(pairs[start : start + _MAX_CONTEXTS])
        ae = AE(ae_title=calling_aet)
        ae.maximum_pdu_size = max_pdu
        ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in sorted(chunk)]
        assoc = ae.associate(host, port, ae_title=called_aet, max_pdu=max_pdu)
        todo = [f for f in files if (f[1], f[2]) in chunk]
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "association failed"
            for path, _, _ in todo:
                result.failures.append((path, f"{reason} by {called_aet}@{host}:{port}"))
            continue
        try:
            for path, _, _ in todo:
                if not assoc.is_established:
                    result.failures.append((path, "association was aborted"))
                    continue
                status = assoc.send_c_store(path)
                code = getattr(status, "Status", None)
                if code == 0x0000:
                    result.sent += 1
                elif code is None:
                    result.failures.append((path, "no response (timeout or abort)"))
                else:
                    comment = getattr(status, "ErrorComment", "")
                    result.failures.append(
                        (path, f"status 0x{int(code):04X}" + (f": {comment}" if comment else ""))
                    )
        finally:
            if assoc.is_established:
                assoc.release()
    return result
