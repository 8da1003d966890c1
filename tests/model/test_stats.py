"""The paper's statistics: hand-computed values, and agreement with R and pROC."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from model.cli import main
from model.stats import (
    delong_auc_ci,
    delong_test,
    diagnostic_metrics,
    pr_curve,
    roc_curve,
    wilson_ci,
    youden_threshold,
)


def test_wilson_by_hand() -> None:
    # 8/10 with continuity correction: p_c = 0.75 (lower) and 0.85 (upper), z = 1.959964.
    z = 1.959963984540054
    n = 10
    z22n = z * z / (2 * n)

    def bound(p: float, sign: int) -> float:
        return (p + z22n + sign * z * math.sqrt(p * (1 - p) / n + z22n / (2 * n))) / (1 + 2 * z22n)

    ci = wilson_ci(8, 10)
    assert ci.estimate == 0.8
    assert ci.low == pytest.approx(bound(0.75, -1), abs=1e-12)
    assert ci.high == pytest.approx(bound(0.85, 1), abs=1e-12)
    assert (ci.low, ci.high) == pytest.approx((0.4421, 0.9645), abs=1e-4)


def test_wilson_edges() -> None:
    assert wilson_ci(0, 10).low == 0.0
    assert wilson_ci(10, 10).high == 1.0
    assert math.isnan(wilson_ci(0, 0).estimate)
    with pytest.raises(ValueError):
        wilson_ci(11, 10)


def test_diagnostic_metrics_use_the_right_denominators() -> None:
    m = diagnostic_metrics(tp=30, fn=10, tn=50, fp=10)
    assert m["sensitivity"].estimate == 0.75
    assert m["specificity"].estimate == 50 / 60
    assert m["ppv"].estimate == 0.75
    assert m["npv"].estimate == 50 / 60
    assert m["accuracy"].estimate == 0.8


def test_roc_auc_by_hand() -> None:
    # Positives 0.9, 0.6, 0.4; negatives 0.7, 0.3: pairs won 2+1+1 of 6 → AUC 4/6.
    labels = [1, 1, 1, 0, 0]
    scores = [0.9, 0.6, 0.4, 0.7, 0.3]
    roc = roc_curve(labels, scores)
    assert roc.auc == pytest.approx(4 / 6)
    auc, _, _ = delong_auc_ci(labels, scores)
    assert auc == pytest.approx(4 / 6)
    assert roc.fpr[0] == 0 and roc.tpr[-1] == 1 and roc.fpr[-1] == 1


def test_ties_count_half() -> None:
    auc, _, _ = delong_auc_ci([1, 0], [0.5, 0.5])
    assert auc == 0.5
    assert roc_curve([1, 0], [0.5, 0.5]).auc == 0.5


def test_average_precision_by_hand() -> None:
    # Ranked: 1 (P), 0.8 (N), 0.6 (P): precision at the recalls 0.5 and 1 is 1 and 2/3.
    pr = pr_curve([1, 0, 1], [1.0, 0.8, 0.6])
    assert pr.average_precision == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_youden_on_a_constructed_example() -> None:
    labels = [0, 0, 0, 0, 1, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9]
    y = youden_threshold(labels, scores)
    # At >= 0.6: sensitivity 4/5, specificity 5/5 → J 0.8; at >= 0.45: 5/5 and 4/5 → 0.8 too;
    # the tie goes to the higher threshold, which flags fewer studies.
    assert y.threshold == 0.6
    assert y.j == pytest.approx(0.8)
    assert (y.sensitivity, y.specificity) == (0.8, 1.0)


def test_identical_scores_give_p_one() -> None:
    labels = [0, 1, 0, 1, 1]
    s = [0.1, 0.8, 0.3, 0.6, 0.2]
    r = delong_test(labels, s, s)
    assert r.z == 0 and r.p == 1.0


def _rscript(code: str) -> str:
    out = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize(
    ("tp", "fn", "tn", "fp"), [(87, 13, 93, 7), (3, 0, 0, 5), (41, 9, 140, 10)]
)
def test_ci_agrees_with_r_prop_test(tp: int, fn: int, tn: int, fp: int, capsys) -> None:
    assert (
        main(
            [
                "stats",
                "ci",
                "--tp",
                str(tp),
                "--fn",
                str(fn),
                "--tn",
                str(tn),
                "--fp",
                str(fp),
                "--json",
            ]
        )
        == 0
    )
    ours = json.loads(capsys.readouterr().out)
    pairs = {
        "accuracy": (tp + tn, tp + fn + tn + fp),
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
    }
    for name, (x, n) in pairs.items():
        if n == 0:
            assert ours[name]["estimate"] is None or math.isnan(ours[name]["estimate"])
            continue
        low, high = map(
            float,
            _rscript(
                f"r <- suppressWarnings(prop.test({x}, {n}, correct=TRUE)); "
                "cat(sprintf('%.10f %.10f', r$conf.int[1], r$conf.int[2]))"
            ).split(),
        )
        assert ours[name]["low"] == pytest.approx(low, abs=5e-4), name
        assert ours[name]["high"] == pytest.approx(high, abs=5e-4), name


def test_delong_agrees_with_proc(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(7)
    n = 150
    y = rng.integers(0, 2, n)
    a = y * 0.9 + rng.normal(0, 0.7, n)
    b = np.round(y * 0.6 + rng.normal(0, 0.7, n) + 0.4 * a, 1)  # correlated, with ties
    path = tmp_path / "scores.csv"
    path.write_text(
        "label,score_a,score_b\n" + "".join(f"{y[i]},{a[i]:.6f},{b[i]:.6f}\n" for i in range(n))
    )
    assert main(["stats", "delong", "--csv", str(path), "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    r = _rscript(
        "suppressMessages(library(pROC)); "
        f"d <- read.csv('{path}'); "
        "ra <- roc(d$label, d$score_a, levels=c(0,1), direction='<', quiet=TRUE); "
        "rb <- roc(d$label, d$score_b, levels=c(0,1), direction='<', quiet=TRUE); "
        "t <- roc.test(ra, rb, method='delong', paired=TRUE); "
        "ca <- ci.auc(ra, method='delong'); cb <- ci.auc(rb, method='delong'); "
        "cat(auc(ra), auc(rb), ca[1], ca[3], cb[1], cb[3], t$statistic, t$p.value)"
    )
    auc_a, auc_b, a_lo, a_hi, b_lo, b_hi, z, p = map(float, r.split())
    assert ours["auc_a"] == pytest.approx(auc_a, abs=5e-4)
    assert ours["auc_b"] == pytest.approx(auc_b, abs=5e-4)
    assert ours["auc_a_ci"] == pytest.approx([a_lo, a_hi], abs=5e-4)
    assert ours["auc_b_ci"] == pytest.approx([b_lo, b_hi], abs=5e-4)
    assert ours["z"] == pytest.approx(z, abs=5e-4)
    assert ours["p"] == pytest.approx(p, abs=5e-4)


def test_delong_csv_errors_are_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("label,score\n1,0.5\n")
    assert main(["stats", "delong", "--csv", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) score_a, score_b" in err
    assert err.count("\n") == 1
