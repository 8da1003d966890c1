"""``triage send``: a C-STORE client over files and folders, for demos and tests."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.presentation import build_context

from triage.errors import TriageError

_MAX_CONTEXTS = 128  # the most presentation contexts one association may propose
_PROBE_TIMEOUT_S = 5.0


@dataclass
class AssociationFailure:
    """An association that could not be made or was lost: why, and the files it held."""

    cause: str
    files: list[Path]


@dataclass
class SendResult:
    """What happened to each file: sent, failed with a reason, or skipped as not DICOM.

    ``failures`` lists every file that was not stored, including those of a failed
    association; ``association_failures`` says once why each association failed.
    """

    sent: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    association_failures: list[AssociationFailure] = field(default_factory=list)

    def fail_association(self, cause: str, files: list[Path]) -> None:
        """Record one failed association and each file it left unsent."""
        self.association_failures.append(AssociationFailure(cause, files))
        self.failures.extend((path, cause) for path in files)

    @property
    def file_failures(self) -> list[tuple[Path, str]]:
        """The failures of single files, beyond those of a failed association."""
        unsent = {path for failure in self.association_failures for path in failure.files}
        return [(path, reason) for path, reason in self.failures if path not in unsent]


def _connection_problem(host: str, port: int) -> str | None:
    """Why a TCP connection to the peer fails, or None when it succeeds."""
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return None
    except ConnectionRefusedError:
        return "connection refused (nothing listens on that port)"
    except socket.gaierror as err:
        return f"unknown host ({err.strerror})"
    except TimeoutError:
        return f"no answer within {_PROBE_TIMEOUT_S:g} s (a firewall, or the wrong host)"
    except OSError as err:
        return err.strerror or str(err)


def association_failure_cause(assoc: Any, host: str, port: int, called_aet: str) -> str:
    """Say why an association request did not give an association, in one line."""
    peer = f"{called_aet}@{host}:{port}"
    response = getattr(assoc.acceptor, "primitive", None)
    if assoc.is_rejected and response is not None:
        return (
            f"{peer} rejected the association: {response.reason_str} "
            f"({response.result_str}, by the {response.source_str})"
        )
    if response is not None and response.result == 0x00:
        return (
            f"{peer} accepted none of the proposed presentation contexts (SOP class and "
            "transfer syntax)"
        )
    problem = _connection_problem(host, port)
    if problem is not None:
        return f"cannot connect to {host}:{port}: {problem}"
    return f"{peer} did not answer the association request"


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

    Files without the DICOM preamble and prefix (a ``train.csv`` beside a study) are
    skipped; DICOM files that cannot be read or sent are failures.
    """
    result = SendResult()
    files: list[tuple[Path, str, str]] = []
    for path in iter_files(paths):
        try:
            ds = dcmread(path, stop_before_pixels=True)
            files.append((path, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
        except InvalidDicomError:
            result.skipped.append(path)
        except (AttributeError, OSError, ValueError, EOFError) as err:
            result.failures.append((path, f"not a readable DICOM file: {err}"))
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
        todo = [f[0] for f in files if (f[1], f[2]) in chunk]
        if not assoc.is_established:
            cause = association_failure_cause(assoc, host, port, called_aet)
            result.fail_association(cause, todo)
            continue
        try:
            for index, path in enumerate(todo):
                if not assoc.is_established:
                    result.fail_association(
                        f"the association with {called_aet}@{host}:{port} was aborted after "
                        f"{index} of {len(todo)} files",
                        todo[index:],
                    )
                    break
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
