"""Weak labels in the RSNA-STR PE layout: per slice, and per exam.

A slice is positive when any embolus voxel lies on it, and a study is positive when any
slice is. Exam labels follow the RSNA-STR Pulmonary Embolism CT data set's rules:
a negative exam has every PE label 0, including both RV/LV labels; a positive exam has
exactly one of the two RV/LV labels set and at least one of right, left or central.

The phantom cannot model motion, poor contrast, flow artefacts, chronic clots, filling
defects that are not PE, or indeterminate exams, so those labels are always 0 (see
:data:`ALWAYS_ZERO`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from model.synthetic.emboli import Embolus

IMAGE_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "pe_present_on_image")
"""Per-image columns of ``train.csv``."""

EXAM_COLUMNS = (
    "negative_exam_for_pe",
    "qa_motion",
    "qa_contrast",
    "flow_artifact",
    "rv_lv_ratio_gte_1",
    "rv_lv_ratio_lt_1",
    "leftsided_pe",
    "chronic_pe",
    "true_filling_defect_not_pe",
    "rightsided_pe",
    "acute_and_chronic_pe",
    "central_pe",
    "indeterminate",
)
"""Per-exam columns of ``train.csv``, repeated on every row of the exam, in RSNA order."""

ALWAYS_ZERO = (
    "qa_motion",
    "qa_contrast",
    "flow_artifact",
    "chronic_pe",
    "true_filling_defect_not_pe",
    "acute_and_chronic_pe",
    "indeterminate",
)
"""Exam labels the phantom cannot model; they are always 0."""


@dataclass(frozen=True)
class ExamLabels:
    """The RSNA exam-level labels of one study (each 0 or 1)."""

    negative_exam_for_pe: int
    qa_motion: int
    qa_contrast: int
    flow_artifact: int
    rv_lv_ratio_gte_1: int
    rv_lv_ratio_lt_1: int
    leftsided_pe: int
    chronic_pe: int
    true_filling_defect_not_pe: int
    rightsided_pe: int
    acute_and_chronic_pe: int
    central_pe: int
    indeterminate: int

    def as_row(self) -> dict[str, int]:
        """Return the labels keyed by their ``train.csv`` column names."""
        return asdict(self)


def exam_labels(emboli: Sequence[Embolus], rv_lv_ratio: float) -> ExamLabels:
    """Derive the exam labels from the emboli that were built and the ventricles.

    Parameters
    ----------
    emboli : sequence of Embolus
        The emboli in the study (empty for a negative study).
    rv_lv_ratio : float
        Ratio of the right to left ventricular diameter built into the phantom.
    """
    positive = bool(emboli)
    return ExamLabels(
        negative_exam_for_pe=int(not positive),
        qa_motion=0,
        qa_contrast=0,
        flow_artifact=0,
        rv_lv_ratio_gte_1=int(positive and rv_lv_ratio >= 1.0),
        rv_lv_ratio_lt_1=int(positive and rv_lv_ratio < 1.0),
        leftsided_pe=int(any(e.left for e in emboli)),
        chronic_pe=0,
        true_filling_defect_not_pe=0,
        rightsided_pe=int(any(e.right for e in emboli)),
        acute_and_chronic_pe=0,
        central_pe=int(any(e.central for e in emboli)),
        indeterminate=0,
    )
