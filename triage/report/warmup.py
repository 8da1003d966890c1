"""Paying the report builders' first-use costs before the first study."""

from __future__ import annotations

import io

from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from triage.decision import Decision
from triage.report.kos import build_kos
from triage.report.result import AnalysisResult
from triage.report.sr import build_sr


def warm_up() -> None:
    """Build and encode one throwaway SR and KOS in memory.

    The first report a process builds costs about half a second more than the next ones
    (highdicom's and pydicom's first-use set-up); a worker calls this at start-up so that
    its first study does not wait for it.
    """
    header = Dataset()
    header.SOPClassUID = CTImageStorage
    header.SOPInstanceUID = generate_uid()
    header.StudyInstanceUID = generate_uid()
    header.SeriesInstanceUID = generate_uid()
    header.Modality = "CT"
    header.InstanceNumber = 1
    header.Rows = header.Columns = 512
    uid = str(header.SOPInstanceUID)
    result = AnalysisResult(
        result_id="warm-up",
        decision=Decision.PRESENT,
        stack_probability=0.9,
        slice_probabilities={uid: 0.9},
        flagged_sop_instance_uids=[uid],
        thresholds={"stack": 0.5, "slice": 0.5},
        algorithm_name="warm-up",
        algorithm_version="0",
        bundle_sha256="0" * 64,
    )
    for report in (build_sr(result, [header]), build_kos(result, [header])):
        if report is not None:
            report.save_as(io.BytesIO(), enforce_file_format=True)
