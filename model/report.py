"""The evaluation report, as the paper reports: for the stack and the slice level, ROC and
PR curves with AUCs, the Youden threshold, confusion matrices, accuracy, sensitivity,
specificity, PPV and NPV with Wilson CIs, calibration (reliability diagram and expected
calibration error) and the Brier score; with the raw, uncalibrated network outputs beside
the calibrated probabilities when a bundle has a calibrator.

Everything in ``report.md`` and the PNGs comes from ``report.json``, so the numbers a
reader sees are the numbers a script reads.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt
import numpy as np

from model.stats import (
    delong_auc_ci,
    diagnostic_metrics,
    pr_curve,
    roc_curve,
    youden_threshold,
)


@dataclass(frozen=True)
class LevelData:
    """Labels and scores at one level (stack or slice), with the operating threshold."""

    name: str
    labels: Sequence[bool]
    scores: Sequence[float]
    threshold: float
    threshold_provenance: str


def _confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    flagged = scores >= threshold
    return {
        "tp": int(np.sum(flagged & labels)),
        "fn": int(np.sum(~flagged & labels)),
        "tn": int(np.sum(~flagged & ~labels)),
        "fp": int(np.sum(flagged & ~labels)),
    }


def _calibration(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            out.append(
                {
                    "bin_low": float(edges[b]),
                    "bin_high": float(edges[b + 1]),
                    "count": int(sel.sum()),
                    "mean_predicted": float(scores[sel].mean()),
                    "fraction_positive": float(labels[sel].mean()),
                }
            )
    return out


def expected_calibration_error(calibration: Sequence[dict[str, Any]]) -> float | None:
    """ECE from the reliability bins: the count-weighted mean |observed − predicted|.

    Ten equal-width bins, as in Guo et al. (2017); the figure the reliability diagram
    shows.
    """
    total = sum(c["count"] for c in calibration)
    if not total:
        return None
    gaps = (c["count"] * abs(c["fraction_positive"] - c["mean_predicted"]) for c in calibration)
    return float(sum(gaps) / total)


HIGH_PROBABILITY = 0.9
"""Negatives scored above this are listed in the report: each needs an explanation."""


def level_metrics(data: LevelData) -> dict[str, Any]:
    """Every figure of one level, JSON-ready."""
    y = np.asarray(data.labels, dtype=bool)
    s = np.asarray(data.scores, dtype=np.float64)
    calibration = _calibration(y, s) if y.size else []
    negatives = s[~y]
    out: dict[str, Any] = {
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "threshold": {"value": data.threshold, "provenance": data.threshold_provenance},
        "brier": float(np.mean((s - y) ** 2)) if y.size else None,
        "calibration": calibration,
        "ece": expected_calibration_error(calibration),
        "max_negative": float(negatives.max()) if negatives.size else None,
        "negatives_above_0.9": int(np.sum(negatives > HIGH_PROBABILITY)),
    }
    cm = _confusion(y, s, data.threshold)
    out["confusion"] = cm
    out["metrics"] = {k: v.to_dict() for k, v in diagnostic_metrics(**cm).items()}
    if y.any() and not y.all():
        roc = roc_curve(y, s)
        pr = pr_curve(y, s)
        auc, low, high = delong_auc_ci(y, s)
        youden = youden_threshold(y, s)
        out["roc_auc"] = {"estimate": auc, "low": low, "high": high, "method": "DeLong"}
        out["average_precision"] = pr.average_precision
        out["youden"] = {
            "threshold": youden.threshold,
            "j": youden.j,
            "sensitivity": youden.sensitivity,
            "specificity": youden.specificity,
        }
        out["roc"] = {"fpr": roc.fpr.tolist(), "tpr": roc.tpr.tolist()}
        out["pr"] = {"precision": pr.precision.tolist(), "recall": pr.recall.tolist()}
    else:
        out["roc_auc"] = None
        out["note"] = "ROC and PR need both classes; this level has only one"
    return out


def _reliability_diagram(
    name: str, m: dict[str, Any], raw: dict[str, Any] | None, path: Path
) -> None:
    """Observed frequency against mean probability per bin, with the bins' counts below."""
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": (3, 1)}
    )
    series = [("calibrated" if raw else "predicted", m, "o-")]
    if raw:
        series.append(("raw network output", raw, "s--"))
    for label, metrics, style in series:
        cal = metrics["calibration"]
        ece = metrics.get("ece")
        text = f"{label} (ECE {ece:.3f})" if ece is not None else label
        ax.plot(
            [c["mean_predicted"] for c in cal],
            [c["fraction_positive"] for c in cal],
            style,
            label=text,
        )
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(
        ylabel="fraction positive",
        title=f"Reliability, {name} level (Brier {m['brier']:.3f})",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize="small")
    cal = m["calibration"]
    counts.bar(
        [(c["bin_low"] + c["bin_high"]) / 2 for c in cal],
        [c["count"] for c in cal],
        width=0.09,
        color="grey",
    )
    counts.set(xlabel="predicted probability (10 bins)", ylabel="count", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plots(
    name: str, m: dict[str, Any], out_dir: Path, raw: dict[str, Any] | None = None
) -> list[str]:
    files = []
    if m.get("roc"):
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        auc = m["roc_auc"]
        ax.plot(
            m["roc"]["fpr"],
            m["roc"]["tpr"],
            label=f"AUC {auc['estimate']:.3f} ({auc['low']:.3f}–{auc['high']:.3f})",
        )
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        ax.set(xlabel="1 − specificity", ylabel="sensitivity", title=f"ROC, {name} level")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}_roc.png", dpi=100)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.step(
            m["pr"]["recall"],
            m["pr"]["precision"],
            where="post",
            label=f"AP {m['average_precision']:.3f}",
        )
        ax.set(
            xlabel="recall (sensitivity)",
            ylabel="precision (PPV)",
            title=f"Precision–recall, {name} level",
            ylim=(0, 1.02),
        )
        ax.legend(loc="lower left")
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}_pr.png", dpi=100)
        plt.close(fig)
        files += [f"{name}_roc.png", f"{name}_pr.png"]
    cm = m["confusion"]
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    ax.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(
            j, i, str(v), ha="center", va="center", color="white" if v > grid.max() / 2 else "black"
        )
    ax.set_xticks([0, 1], ["predicted −", "predicted +"])
    ax.set_yticks([0, 1], ["actual −", "actual +"])
    ax.set_title(f"{name} level, threshold {m['threshold']['value']:.3f}")
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}_confusion.png", dpi=100)
    plt.close(fig)
    _reliability_diagram(name, m, raw, out_dir / f"{name}_calibration.png")
    return [*files, f"{name}_confusion.png", f"{name}_calibration.png"]


def _fmt(v: dict[str, float | None]) -> str:
    est, low, high = v["estimate"], v["low"], v["high"]
    if est is None or low is None or high is None:
        return "n/a"
    return f"{100 * est:.1f}% ({100 * low:.1f}–{100 * high:.1f})"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation report: {report['bundle'].get('name', '')}", ""]
    for key, value in report.get("summary", {}).items():
        lines.append(f"- {key}: {value}")
    for name, m in report["levels"].items():
        lines += ["", f"## {name.capitalize()} level", ""]
        lines.append(f"{m['n']} {name}s, {m['n_positive']} positive.")
        if m["roc_auc"]:
            a = m["roc_auc"]
            lines.append(
                f"ROC AUC {a['estimate']:.3f} (95% CI {a['low']:.3f}–{a['high']:.3f}, DeLong); "
                f"average precision {m['average_precision']:.3f}; Youden threshold "
                f"{m['youden']['threshold']:.4f} (J {m['youden']['j']:.3f})."
            )
        t = m["threshold"]
        cm = m["confusion"]
        lines += [
            "",
            f"At threshold {t['value']:.4f} ({t['provenance']}): "
            f"TP {cm['tp']}, FN {cm['fn']}, TN {cm['tn']}, FP {cm['fp']}.",
            "",
            "| metric | value (95% CI, Wilson with continuity correction) |",
            "| --- | --- |",
        ]
        for metric, value in m["metrics"].items():
            lines.append(f"| {metric} | {_fmt(value)} |")
        lines.append(
            f"\nBrier score {m['brier']:.4f}; expected calibration error (10 bins) "
            f"{_num(m['ece'])}; highest probability on a negative {_num(m['max_negative'])}."
        )
        high = m["negatives_above_0.9"]
        lines.append(
            f"Negatives above {HIGH_PROBABILITY}: {high}"
            + (" (listed in predictions.csv; each needs an explanation)." if high else ".")
            + "\n"
        )
        raw = report.get("levels_raw", {}).get(name)
        if raw:
            lines += [
                "Calibrated probabilities against the raw network output:",
                "",
                "| | ROC AUC | ECE | Brier | highest on a negative |",
                "| --- | --- | --- | --- | --- |",
            ]
            for label, x in (("calibrated", m), ("raw", raw)):
                auc = x["roc_auc"]["estimate"] if x["roc_auc"] else None
                lines.append(
                    f"| {label} | {_num(auc)} | {_num(x['ece'])} | {_num(x['brier'])} "
                    f"| {_num(x['max_negative'])} |"
                )
            lines.append("")
        for png in m.get("figures", []):
            lines.append(f"![{png}]({png})")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path,
    levels: Sequence[LevelData],
    predictions: Sequence[dict[str, Any]],
    bundle_info: dict[str, Any],
    summary: dict[str, Any] | None = None,
    raw_levels: Sequence[LevelData] = (),
) -> dict[str, Any]:
    """Write ``report.json``, ``report.md``, the PNGs and ``predictions.csv``; return the report.

    ``raw_levels`` are the same levels scored with the uncalibrated network outputs; their
    figures go to ``levels_raw`` and beside the calibrated ones in the markdown and the
    reliability diagrams.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"bundle": bundle_info, "summary": summary or {}, "levels": {}}
    raw_metrics = {level.name: level_metrics(level) for level in raw_levels}
    if raw_metrics:
        report["levels_raw"] = {
            name: {k: v for k, v in m.items() if k not in ("roc", "pr")}
            for name, m in raw_metrics.items()
        }
    for level in levels:
        m = level_metrics(level)
        m["figures"] = _plots(level.name, m, out_dir, raw_metrics.get(level.name))
        report["levels"][level.name] = m
    if predictions:
        with (out_dir / "predictions.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(predictions[0]))
            writer.writeheader()
            writer.writerows(predictions)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.md").write_text(_markdown(report))
    return report
