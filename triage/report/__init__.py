"""Report objects for one analysis: a Comprehensive 3D SR and, for positives, a KOS.

Both are built only with highdicom, in the analysed study and new series, with UIDs
derived from :attr:`AnalysisResult.result_id` (a retried delivery resends the outbox
file, so it keeps them).

- :class:`AnalysisResult` is what the worker hands over.
- :func:`build_sr` builds the TID 1500 Measurement Report.
- :func:`build_kos` builds the "Of Interest" Key Object Selection, or ``None``.
- :class:`ReportUIDs` tells the UIDs before anything is built.
- :func:`warm_up` pays the first build's set-up costs ahead of the first study.
"""

from triage.decision import Decision
from triage.report.kos import build_kos
from triage.report.result import AnalysisResult
from triage.report.sr import build_sr
from triage.report.uids import ReportUIDs
from triage.report.warmup import warm_up

__all__ = ["AnalysisResult", "Decision", "ReportUIDs", "build_kos", "build_sr", "warm_up"]
