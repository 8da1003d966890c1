"""Build one analysis' reports: the SR (always) and the KOS (positives), encoded.

Built before the result is stored, outside any transaction: on SQLite a transaction
holds the database's write lock, which the receiver needs for every instance it
acknowledges.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_ROOT_UID

from triage.analyse.decide import Outcome
from triage.config import ReportConfig
from triage.logs import describe_error, error_frames
from triage.report import AnalysisResult, build_kos, build_sr
from triage.report.device import Device
from triage.report.source import conformant_header

ALGORITHM_NAME = "CTPA PE triage (CNN+BiLSTM)"


@dataclass(frozen=True)
class Reports:
    """One result's encoded SR and KOS, before they go to the outbox.

    Either may be missing when it could not be built; the other still goes.
    """

    sr: bytes | None = None
    sr_uid: str | None = None
    kos: bytes | None = None
    kos_uid: str | None = None

    @property
    def any(self) -> bool:
        """Whether there is an object to store in a PACS."""
        return self.sr is not None or self.kos is not None


def build_reports(
    job_id: int,
    outcome: Outcome,
    headers: list[Dataset],
    bundle: Any,
    cfg: ReportConfig,
    bound: Any,
) -> Reports | None:
    """Build and encode the SR (and, for a positive, the KOS); None without headers.

    Parameters
    ----------
    job_id : int
        The job analysed; it seeds the reports' UIDs.
    outcome : Outcome
        What the analysis concluded.
    headers : list of Dataset
        The series' headers (no pixels needed).
    bundle : Bundle
        The weight bundle: its name, version and hash go into the reports.
    cfg : ReportConfig
        The ``report`` section: manufacturer, serial number, institution.
    bound : BoundLogger
        The job's logger.
    """
    if not headers:
        bound.warning("report_skipped", reason="no readable header in the series")
        return None
    # Made conformant once, with one log line per value repaired or left out; the
    # builders then find nothing more to change.
    patient_study = None
    try:
        patient_study = conformant_header(headers[0], bound)
    except Exception as err:  # the builders try again; what they cannot build is left
        bound.error("header_conform_failed", error=describe_error(err))
    # Seeds the reports' UIDs; unique per analysis, as the result row's id does not
    # exist yet. A resend reads the outbox file, so it keeps the same UIDs.
    analysis = analysis_result(f"job-{job_id}-{uuid.uuid4().hex}", outcome, bundle)
    options = builder_options(cfg, patient_study)
    # Each object on its own: a header that still defeats one builder must not
    # keep the other object, the HL7 flag or the worklist from the radiologist.
    sr = _built("sr", lambda: build_sr(analysis, headers, **options), bound)
    kos = _built("kos", lambda: build_kos(analysis, headers, **options), bound)
    return Reports(
        sr=sr[0] if sr else None,
        sr_uid=sr[1] if sr else None,
        kos=kos[0] if kos else None,
        kos_uid=kos[1] if kos else None,
    )


def analysis_result(seed: str, outcome: Outcome, bundle: Any) -> AnalysisResult:
    """What the report builders take from an analysis; ``seed`` seeds their UIDs."""
    return AnalysisResult(
        result_id=seed,
        decision=outcome.decision,
        stack_probability=outcome.stack_probability,
        slice_probabilities=outcome.slice_probabilities or {},
        flagged_sop_instance_uids=outcome.flagged or [],
        thresholds=outcome.thresholds.as_dict(),
        algorithm_name=ALGORITHM_NAME,
        algorithm_version=f"{bundle.name} {bundle.version}"[:64],
        bundle_sha256=bundle.manifest_sha256,
        undetermined_reason=outcome.reason,
    )


def builder_options(cfg: ReportConfig, patient_study: Dataset | None) -> dict[str, Any]:
    """The device and patient arguments every report builder takes."""
    device = Device.create(
        cfg.manufacturer, cfg.device_serial_number, cfg.institution_name, PYDICOM_ROOT_UID
    )
    return {"device": device, "patient_study": patient_study}


def read_headers(files: list[Path], bound: Any) -> list[Dataset]:
    """The series' headers for the reports; unreadable files are left out."""
    headers: list[Dataset] = []
    for path in files:
        try:
            headers.append(dcmread(path, stop_before_pixels=True))
        except (InvalidDicomError, OSError) as err:
            bound.warning("header_unreadable", file=path.name, error=str(err))
    return headers


def _built(what: str, build: Callable[[], Dataset | None], bound: Any) -> tuple[bytes, str] | None:
    """Build and encode one report object: its bytes and SOP Instance UID, or None.

    A failure is logged by the error's class and place only: a library's message
    quotes the header value it refused.
    """
    try:
        dataset = build()
        if dataset is None:
            return None
        return encode(dataset), str(dataset.SOPInstanceUID)
    except Exception as err:
        bound.error(
            "report_build_failed", object=what, error=describe_error(err), frames=error_frames(err)
        )
        return None


def encode(dataset: Dataset) -> bytes:
    """A dataset as the bytes of a DICOM file."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
