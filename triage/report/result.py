"""What one analysis of one CT series concluded: the input of the report builders."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from triage.decision import Decision

_SHA256 = re.compile(r"[0-9a-f]{64}")

# Both strings also go into Long String (LO) header attributes (Contributing Equipment),
# which hold at most 64 characters and no backslash.
_LO_MAX = 64


@dataclass(frozen=True)
class AnalysisResult:
    """The outcome of one analysis of one series, as the worker hands it to the reports.

    The object is checked when it is created, so a report builder never has to guess
    what a malformed result meant.

    Parameters
    ----------
    result_id : str
        Unique per analysis (the worker uses ``"job-<id>-<random hex>"``). It seeds the
        UIDs of the SR and KOS: building twice from the same object gives the same
        UIDs. A retried delivery stays idempotent because it resends the outbox file,
        not a rebuild.
    decision : {"present", "absent", "undetermined"}
        The study-level call. ``"undetermined"`` means the model could not give one
        (for example, the series was too short); ``undetermined_reason`` says why.
    stack_probability : float or None
        The study-level probability of pulmonary embolism, in [0, 1]. ``None`` when,
        and only when, the decision is undetermined.
    slice_probabilities : Mapping[str, float]
        SOP Instance UID to the slice-level probability, in [0, 1].
    flagged_sop_instance_uids : Sequence[str]
        The slices at or above the slice threshold, most probable first. Each must
        have an entry in `slice_probabilities`.
    thresholds : Mapping[str, float]
        The thresholds the decision used, by name, for example
        ``{"stack": 0.42, "slice": 0.5}``.
    algorithm_name : str
        A human-readable name of the model, for example
        ``"CTPA PE triage (CNN+BiLSTM)"``. At most 64 characters.
    algorithm_version : str
        The bundle's name and version. At most 64 characters.
    bundle_sha256 : str
        The SHA-256 of the model bundle, 64 lowercase hexadecimal digits.
    undetermined_reason : str or None, optional
        Why no decision was made. Only allowed when the decision is undetermined.

    Raises
    ------
    ValueError
        When a field is out of range or the fields contradict each other.
    """

    result_id: str
    decision: Decision
    stack_probability: float | None
    slice_probabilities: Mapping[str, float]
    flagged_sop_instance_uids: Sequence[str]
    thresholds: Mapping[str, float]
    algorithm_name: str
    algorithm_version: str
    bundle_sha256: str
    undetermined_reason: str | None = None

    def __post_init__(self) -> None:
        if not self.result_id.strip():
            raise ValueError("The result_id is empty; it must identify the result uniquely.")
        try:  # a plain string from a caller becomes the enum, or is refused here
            object.__setattr__(self, "decision", Decision(self.decision))
        except ValueError:
            raise ValueError(
                f"The decision {self.decision!r} is not one of {', '.join(Decision)}."
            ) from None
        if self.decision == Decision.UNDETERMINED:
            if self.stack_probability is not None:
                raise ValueError(
                    "An undetermined result has no stack probability; pass None, or "
                    "decide present or absent."
                )
        else:
            if self.stack_probability is None:
                raise ValueError(
                    f"A {self.decision} result needs its stack probability; only an "
                    "undetermined result may omit it."
                )
            _check_probability("stack_probability", self.stack_probability)
            if self.undetermined_reason is not None:
                raise ValueError(f"A {self.decision} result cannot carry an undetermined_reason.")
        for uid, probability in self.slice_probabilities.items():
            _check_probability(f"slice_probabilities[{uid!r}]", probability)
        if isinstance(self.flagged_sop_instance_uids, str):
            raise ValueError("flagged_sop_instance_uids must be a sequence of UIDs, not a str.")
        if len(set(self.flagged_sop_instance_uids)) != len(self.flagged_sop_instance_uids):
            raise ValueError("flagged_sop_instance_uids lists the same slice more than once.")
        missing = [u for u in self.flagged_sop_instance_uids if u not in self.slice_probabilities]
        if missing:
            raise ValueError(
                f"The flagged slices {missing} have no entry in slice_probabilities; the "
                "report states each flagged slice's probability."
            )
        for name, value in self.thresholds.items():
            _check_probability(f"thresholds[{name!r}]", value)
        for field in ("algorithm_name", "algorithm_version"):
            value = getattr(self, field)
            if not value.strip() or len(value) > _LO_MAX or "\\" in value:
                raise ValueError(
                    f"The {field} {value!r} must be 1 to {_LO_MAX} characters without a "
                    "backslash, because DICOM stores it as a Long String."
                )
        if not _SHA256.fullmatch(self.bundle_sha256):
            raise ValueError(
                f"The bundle_sha256 {self.bundle_sha256!r} is not 64 lowercase hexadecimal digits."
            )


def _check_probability(name: str, value: float) -> None:
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} is {value!r}; a probability must be a number in [0, 1].")
