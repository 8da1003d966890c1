"""Predict and decide: the model's probabilities, the thresholds in force, the call.

Nothing here touches the database or the outbox: :func:`analyse` turns a series' files
into an :class:`Outcome`, which the report builders and the store take from there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from triage.config import ThresholdsConfig
from triage.db.models import Decision

if TYPE_CHECKING:
    from model.predict import Prediction
    from model.preprocess import PreprocessedSeries


class SeriesPredictor(Protocol):
    """The part of :class:`model.predict.Predictor` a worker uses (tests substitute it)."""

    bundle: Any
    device: str
    backend: str

    def predict(self, files: Sequence[str | Path]) -> Prediction: ...


class PreparingPredictor(SeriesPredictor, Protocol):
    """A predictor that can also preprocess a series apart from predicting on it."""

    def preprocess(self, files: Sequence[str | Path]) -> PreprocessedSeries: ...

    def predict_preprocessed(self, series: PreprocessedSeries) -> Prediction: ...


@dataclass(frozen=True)
class AppliedThresholds:
    """The thresholds one result used, and whether the YAML or the bundle set them."""

    stack: float
    slice: float
    source: str

    def as_dict(self) -> dict[str, float]:
        """``{"stack": ..., "slice": ...}`` for the report's algorithm parameters."""
        return {"stack": self.stack, "slice": self.slice}


def apply_thresholds(
    configured: ThresholdsConfig, bundle_thresholds: Mapping[str, Any]
) -> AppliedThresholds:
    """Pick each threshold: the YAML value if set, else the bundle's (Youden on validation).

    Parameters
    ----------
    configured : ThresholdsConfig
        The ``thresholds`` section in force for this job.
    bundle_thresholds : Mapping
        The bundle's ``{"stack": ..., "slice": ...}``, each a number or an object with a
        ``value`` (attribute or key).

    Returns
    -------
    AppliedThresholds
        ``source`` is ``config`` or ``bundle``, or ``stack=config,slice=bundle`` when
        they differ.
    """

    def bundle_value(key: str) -> float:
        item = bundle_thresholds[key]
        if isinstance(item, Mapping):
            return float(item["value"])
        return float(getattr(item, "value", item))

    stack_src = "config" if configured.stack is not None else "bundle"
    slice_src = "config" if configured.slice is not None else "bundle"
    stack = configured.stack if configured.stack is not None else bundle_value("stack")
    slice_ = configured.slice if configured.slice is not None else bundle_value("slice")
    source = stack_src if stack_src == slice_src else f"stack={stack_src},slice={slice_src}"
    return AppliedThresholds(stack=float(stack), slice=float(slice_), source=source)


def flag_slices(
    slice_probabilities: Mapping[str, float], threshold: float, limit: int
) -> list[str]:
    """The SOP Instance UIDs at or above ``threshold``, most probable first, at most
    ``limit`` of them (ties keep the series order, so a rerun flags the same slices)."""
    ranked = sorted(
        (uid for uid, p in slice_probabilities.items() if p >= threshold),
        key=lambda uid: -slice_probabilities[uid],
    )
    return ranked[:limit]


@dataclass
class Outcome:
    """What analysing a series concluded, before it is reported and stored."""

    decision: Decision
    thresholds: AppliedThresholds
    stack_probability: float | None = None
    slice_probabilities: dict[str, float] | None = None
    flagged: list[str] | None = None
    timings: dict[str, float] | None = None
    reason: str | None = None
    # The series' headers as the predictor read them (none for a rejected series).
    headers: list[Dataset] | None = None
    # The model input the prediction was made on (model.preprocess.PreprocessedSeries),
    # for the heat maps; None where the predictor keeps none.
    series: Any = None


def analyse(
    predictor: SeriesPredictor,
    files: list[Path],
    applied: AppliedThresholds,
    max_flagged_slices: int,
    spool_dir: Path,
    prepared: PreprocessedSeries | None = None,
) -> Outcome:
    """Run the predictor on ``files`` and decide; a series it rejects is undetermined.

    ``prepared`` is the model input already made from exactly ``files``
    (:mod:`triage.analyse.early`): the predictor then starts at the CNN, and the timings
    give the reading and preprocessing done before as ``early_preprocess``.

    Any other error of the predictor propagates: the attempt failed, and is retried.
    """
    from model.preprocess import SeriesRejectedError

    try:
        if prepared is not None:
            prediction = cast(PreparingPredictor, predictor).predict_preprocessed(prepared)
            prediction.timings["early_preprocess"] = sum(
                prepared.timings.get(stage, 0.0) for stage in ("read", "preprocess")
            )
        else:
            prediction = predictor.predict(files)
    except (SeriesRejectedError, InvalidDicomError, FileNotFoundError) as err:
        # Retrying cannot make a short or unreadable series analysable. The reason
        # goes into the SR the PACS shows: a file is named as the spool knows it
        # (<study>/<series>/<instance>.dcm), not by this host's folders.
        reason = str(err).replace(f"{spool_dir}{os.sep}", "")
        return Outcome(Decision.UNDETERMINED, applied, reason=reason)
    decision = (
        Decision.PRESENT if prediction.stack_probability >= applied.stack else Decision.ABSENT
    )
    flagged = flag_slices(prediction.slice_probabilities, applied.slice, max_flagged_slices)
    return Outcome(
        decision,
        applied,
        stack_probability=float(prediction.stack_probability),
        slice_probabilities={k: float(v) for k, v in prediction.slice_probabilities.items()},
        flagged=flagged,
        timings=dict(prediction.timings),
        headers=prediction.headers,
        series=getattr(prediction, "series", None),
    )
