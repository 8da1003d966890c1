"""Probability calibration: fitted on out-of-fold predictions, stored in the bundle.

A network trained on balanced slices, or chosen by validation loss, does not output
probabilities that mean what they say: the worklist, the SR and the HL7 message show the
number, so a 0.98 must be right about 98 times in 100. A :class:`Calibrator` maps a raw
score to a calibrated probability. ``platt`` fits a logistic regression on the raw score's
logit (two parameters: robust with a few dozen studies); ``isotonic`` fits a monotone step
function (more flexible, needs more data); ``none`` is the identity.

The bundle's manifest stores one calibrator per level (``stack`` and ``slice``) as
:meth:`Calibrator.to_dict`, and the predictor applies it before thresholds, which are
chosen on calibrated probabilities. This module needs only numpy to apply a calibrator;
fitting imports scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

CALIBRATION_METHODS = ("platt", "isotonic", "none")
"""How a calibrator maps raw scores to probabilities."""

# Raw scores are clipped away from 0 and 1 before the logit: a sigmoid saturates in
# float32 and the logit of exactly 0 or 1 is infinite.
_EPS = 1e-6


def _logit(scores: NDArray[np.float64]) -> NDArray[np.float64]:
    p = np.clip(scores, _EPS, 1.0 - _EPS)
    return np.asarray(np.log(p) - np.log1p(-p), dtype=np.float64)


@dataclass(frozen=True)
class Calibrator:
    """A fitted map from raw scores to calibrated probabilities.

    Parameters
    ----------
    method : str
        One of :data:`CALIBRATION_METHODS`.
    slope, intercept : float
        ``platt``: probability = sigmoid(slope × logit(score) + intercept).
    knots_x, knots_y : tuple of float
        ``isotonic``: the fitted step function's knots, interpolated linearly between
        them and held constant outside.
    fitted_on : dict
        Provenance: how many predictions (and positives) it was fitted on, and where they
        came from.
    """

    method: str = "none"
    slope: float = 1.0
    intercept: float = 0.0
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, "
                f"not {self.method!r}."
            )
        if self.method == "isotonic":
            if len(self.knots_x) < 1 or len(self.knots_x) != len(self.knots_y):
                raise ValueError("an isotonic calibrator needs as many knots_y as knots_x.")
            if np.any(np.diff(self.knots_x) < 0) or np.any(np.diff(self.knots_y) < 0):
                raise ValueError("an isotonic calibrator's knots must be non-decreasing.")
        if self.method == "platt" and not (np.isfinite(self.slope) and np.isfinite(self.intercept)):
            raise ValueError("a Platt calibrator needs a finite slope and intercept.")

    def apply(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Return the calibrated probabilities of raw ``scores`` (any shape)."""
        raw = np.asarray(scores, dtype=np.float64)
        if self.method == "platt":
            z = self.slope * _logit(raw) + self.intercept
            return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(raw, self.knots_x, self.knots_y)
        return raw.copy()

    def to_dict(self) -> dict[str, Any]:
        """Return the calibrator as JSON-ready values, for the bundle's manifest."""
        out: dict[str, Any] = {"method": self.method, "fitted_on": dict(self.fitted_on)}
        if self.method == "platt":
            out.update(slope=self.slope, intercept=self.intercept)
        elif self.method == "isotonic":
            out.update(knots_x=list(self.knots_x), knots_y=list(self.knots_y))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        """Rebuild a calibrator from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            If a field is missing, unknown or invalid.
        """
        known = {"method", "slope", "intercept", "knots_x", "knots_y", "fitted_on"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown calibrator field(s): {', '.join(unknown)}")
        try:
            return cls(
                method=str(data["method"]),
                slope=float(data.get("slope", 1.0)),
                intercept=float(data.get("intercept", 0.0)),
                knots_x=tuple(float(x) for x in data.get("knots_x", ())),
                knots_y=tuple(float(y) for y in data.get("knots_y", ())),
                fitted_on=dict(data.get("fitted_on", {})),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed calibrator {dict(data)!r}") from err


IDENTITY = Calibrator()
"""The calibrator of bundles that have none: probabilities pass through unchanged."""


def fit_calibrator(
    method: str, labels: Sequence[bool] | ArrayLike, scores: ArrayLike, source: str = ""
) -> Calibrator:
    """Fit a calibrator of ``method`` to raw ``scores`` and their true ``labels``.

    Parameters
    ----------
    method : str
        One of :data:`CALIBRATION_METHODS`.
    labels, scores : array-like
        One label and one raw score per prediction; fit on held-out (out-of-fold)
        predictions, never on the data the network was fitted to.
    source : str
        Where the predictions came from, recorded in ``fitted_on``.

    Raises
    ------
    ValueError
        If the method is unknown, or ``platt``/``isotonic`` is asked for with only one
        class present.
    """
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(y) != len(s):
        raise ValueError(f"{len(y)} labels but {len(s)} scores.")
    provenance = {"n": len(y), "n_positive": int(y.sum()), "source": source}
    if method == "none":
        return Calibrator("none", fitted_on=provenance)
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, not {method!r}."
        )
    if y.all() or not y.any():
        raise ValueError(f"cannot fit a {method} calibrator on predictions of one class only.")
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        # Practically unregularised (C large): two parameters need no shrinkage, and
        # shrinkage would pull every probability toward the prevalence.
        model = LogisticRegression(C=1e6, max_iter=1000)
        model.fit(_logit(s)[:, None], y)
        return Calibrator(
            "platt",
            slope=float(model.coef_[0, 0]),
            intercept=float(model.intercept_[0]),
            fitted_on=provenance,
        )
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(s, y.astype(np.float64))
    return Calibrator(
        "isotonic",
        knots_x=tuple(float(x) for x in iso.X_thresholds_),
        knots_y=tuple(float(v) for v in iso.y_thresholds_),
        fitted_on=provenance,
    )
