"""The paper's statistics: ROC/PR curves, Youden thresholds, Wilson CIs and DeLong's test.

Proportions are in [0, 1]. The confidence intervals are those R gives, so a research team
can check our numbers against its own:

- :func:`wilson_ci` is the Wilson score interval with continuity correction (Newcombe's
  method 4) exactly as ``prop.test(x, n, correct=TRUE)$conf.int`` computes it, including
  R's rule that the correction never exceeds ``|x - n/2|``.
- :func:`delong_test` is pROC's ``roc.test(method="delong", paired=TRUE)`` and its AUC CIs
  are ``ci.auc(method="delong")``, for scores where higher means positive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm


@dataclass(frozen=True)
class Interval:
    """A proportion with its confidence interval."""

    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        """As ``{"estimate", "low", "high"}``; an undefined proportion (n = 0) is None."""
        return {k: None if np.isnan(v) else v for k, v in asdict(self).items()}


def wilson_ci(x: int, n: int, confidence: float = 0.95, correct: bool = True) -> Interval:
    """Wilson score interval of ``x`` successes in ``n`` trials, as R's ``prop.test``.

    With ``n == 0`` the proportion is undefined and every field is NaN.
    """
    if n < 0 or x < 0 or x > n:
        raise ValueError(f"need 0 <= x <= n, got x={x}, n={n}")
    if n == 0:
        nan = float("nan")
        return Interval(nan, nan, nan)
    p_hat = x / n
    z = float(norm.ppf((1 + confidence) / 2))
    # R: YATES <- min(0.5, abs(x - n * p)) with the null p = 0.5.
    yates = min(0.5, abs(x - n * 0.5)) if correct else 0.0
    z22n = z * z / (2 * n)

    def bound(p_c: float, sign: float) -> float:
        return (p_c + z22n + sign * z * np.sqrt(p_c * (1 - p_c) / n + z22n / (2 * n))) / (
            1 + 2 * z22n
        )

    p_c = p_hat + yates / n
    high = 1.0 if p_c >= 1 else float(bound(p_c, 1.0))
    p_c = p_hat - yates / n
    low = 0.0 if p_c <= 0 else float(bound(p_c, -1.0))
    return Interval(p_hat, max(low, 0.0), min(high, 1.0))


def diagnostic_metrics(
    tp: int, fn: int, tn: int, fp: int, confidence: float = 0.95
) -> dict[str, Interval]:
    """Accuracy, sensitivity, specificity, PPV and NPV, each with its Wilson CI."""
    for name, value in (("tp", tp), ("fn", fn), ("tn", tn), ("fp", fp)):
        if value < 0:
            raise ValueError(f"{name} must be 0 or more, got {value}")
    return {
        "accuracy": wilson_ci(tp + tn, tp + fn + tn + fp, confidence),
        "sensitivity": wilson_ci(tp, tp + fn, confidence),
        "specificity": wilson_ci(tn, tn + fp, confidence),
        "ppv": wilson_ci(tp, tp + fp, confidence),
        "npv": wilson_ci(tn, tn + fn, confidence),
    }


def _labels_scores(
    labels: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("labels and scores must be 1-D and of the same length")
    if not np.isin(y, [0, 1]).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("need at least one positive and one negative label")
    return y, s


@dataclass(frozen=True)
class RocCurve:
    """False and true positive rates at each distinct threshold (score >= threshold)."""

    fpr: NDArray[np.float64]
    tpr: NDArray[np.float64]
    thresholds: NDArray[np.float64]
    auc: float


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> RocCurve:
    """The ROC curve, from (0, 0) at threshold +inf to (1, 1), and its trapezoidal AUC."""
    y, s = _labels_scores(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (~y).sum()]
    thresholds = np.r_[np.inf, s_sorted[distinct]]
    return RocCurve(fpr, tpr, thresholds, float(np.trapezoid(tpr, fpr)))


@dataclass(frozen=True)
class PrCurve:
    """Precision and recall at each distinct threshold, and the average precision."""

    precision: NDArray[np.float64]
    recall: NDArray[np.float64]
    thresholds: NDArray[np.float64]
    average_precision: float


def pr_curve(labels: ArrayLike, scores: ArrayLike) -> PrCurve:
    """Precision–recall curve; average precision as the step-wise sum (no interpolation)."""
    y, s = _labels_scores(labels, scores)
    roc = roc_curve(y, s)
    tps = roc.tpr[1:] * y.sum()
    fps = roc.fpr[1:] * (~y).sum()
    precision = tps / (tps + fps)
    recall = roc.tpr[1:]
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return PrCurve(np.r_[1.0, precision], np.r_[0.0, recall], roc.thresholds, ap)


@dataclass(frozen=True)
class Youden:
    """The threshold that maximises sensitivity + specificity − 1."""

    threshold: float
    j: float
    sensitivity: float
    specificity: float


def youden_threshold(labels: ArrayLike, scores: ArrayLike) -> Youden:
    """Youden's J over the ROC's thresholds; ties go to the higher threshold (fewer flags)."""
    roc = roc_curve(labels, scores)
    j = roc.tpr - roc.fpr
    finite = np.isfinite(roc.thresholds)
    j_finite = np.where(finite, j, -np.inf)
    best = int(np.argmax(j_finite))  # first maximum = highest threshold
    return Youden(
        threshold=float(roc.thresholds[best]),
        j=float(j[best]),
        sensitivity=float(roc.tpr[best]),
        specificity=float(1 - roc.fpr[best]),
    )


def _placements(
    y: NDArray[np.bool_], s: NDArray[np.float64]
) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
    """DeLong's structural components: AUC, V10 (per positive), V01 (per negative)."""
    pos, neg = s[y], s[~y]
    # psi(x, y) = 1 if x > y, 0.5 if equal: counted with sorted searches, not an m×n matrix.
    neg_sorted = np.sort(neg)
    pos_sorted = np.sort(pos)
    below = np.searchsorted(neg_sorted, pos, side="left")
    equal = np.searchsorted(neg_sorted, pos, side="right") - below
    v10 = (below + 0.5 * equal) / len(neg)
    above = len(pos) - np.searchsorted(pos_sorted, neg, side="right")
    equal_n = np.searchsorted(pos_sorted, neg, side="right") - np.searchsorted(
        pos_sorted, neg, side="left"
    )
    v01 = (above + 0.5 * equal_n) / len(pos)
    return float(v10.mean()), v10, v01


@dataclass(frozen=True)
class DeLongResult:
    """Two paired AUCs, their DeLong CIs, and the test of their difference."""

    auc_a: float
    auc_b: float
    auc_a_ci: tuple[float, float]
    auc_b_ci: tuple[float, float]
    z: float
    p: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``triage-model stats delong --json``."""
        return {
            "auc_a": self.auc_a,
            "auc_b": self.auc_b,
            "auc_a_ci": list(self.auc_a_ci),
            "auc_b_ci": list(self.auc_b_ci),
            "z": self.z,
            "p": self.p,
        }


def _ci(auc: float, var: float, confidence: float) -> tuple[float, float]:
    z = float(norm.ppf((1 + confidence) / 2))
    half = z * float(np.sqrt(var))
    return max(0.0, auc - half), min(1.0, auc + half)


def delong_auc_ci(
    labels: ArrayLike, scores: ArrayLike, confidence: float = 0.95
) -> tuple[float, float, float]:
    """``(auc, low, high)`` with DeLong's variance, as pROC's ``ci.auc(method="delong")``."""
    y, s = _labels_scores(labels, scores)
    auc, v10, v01 = _placements(y, s)
    var = np.var(v10, ddof=1) / len(v10) + np.var(v01, ddof=1) / len(v01)
    low, high = _ci(auc, float(var), confidence)
    return auc, low, high


def delong_test(
    labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, confidence: float = 0.95
) -> DeLongResult:
    """DeLong's test for two correlated ROC AUCs on the same cases (two-sided)."""
    y, a = _labels_scores(labels, scores_a)
    _, b = _labels_scores(labels, scores_b)
    auc_a, v10a, v01a = _placements(y, a)
    auc_b, v10b, v01b = _placements(y, b)
    s10 = np.cov(np.vstack([v10a, v10b]), ddof=1)
    s01 = np.cov(np.vstack([v01a, v01b]), ddof=1)
    cov = s10 / len(v10a) + s01 / len(v01a)
    var_diff = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var_diff <= 0:
        # Identical (or perfectly concordant) scores: no evidence of a difference.
        z = 0.0 if auc_a == auc_b else float("inf") * np.sign(auc_a - auc_b)
    else:
        z = (auc_a - auc_b) / np.sqrt(var_diff)
    p = float(2 * norm.sf(abs(z)))
    return DeLongResult(
        auc_a=auc_a,
        auc_b=auc_b,
        auc_a_ci=_ci(auc_a, float(cov[0, 0]), confidence),
        auc_b_ci=_ci(auc_b, float(cov[1, 1]), confidence),
        z=float(z),
        p=p,
    )
