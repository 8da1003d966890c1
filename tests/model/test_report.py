"""The evaluation report: files exist, and what they say matches report.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from model.report import LevelData, write_report
from model.stats import delong_auc_ci, wilson_ci


def test_report_files_and_numbers_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60).astype(bool)
    s = np.clip(y * 0.4 + rng.uniform(0, 0.6, 60), 0, 1)
    ys = rng.integers(0, 2, 400).astype(bool)
    ss = np.clip(ys * 0.3 + rng.uniform(0, 0.7, 400), 0, 1)
    preds = [{"series": f"1.2.{i}", "label": int(y[i]), "score": float(s[i])} for i in range(60)]
    report = write_report(
        tmp_path,
        [
            LevelData("stack", y.tolist(), s.tolist(), 0.5, "test"),
            LevelData("slice", ys.tolist(), ss.tolist(), 0.45, "test"),
        ],
        preds,
        {"name": "demo"},
    )
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    stack = on_disk["levels"]["stack"]
    flagged = s >= 0.5
    assert stack["confusion"] == {
        "tp": int((flagged & y).sum()),
        "fn": int((~flagged & y).sum()),
        "tn": int((~flagged & ~y).sum()),
        "fp": int((flagged & ~y).sum()),
    }
    tp, fn = stack["confusion"]["tp"], stack["confusion"]["fn"]
    assert stack["metrics"]["sensitivity"]["low"] == wilson_ci(tp, tp + fn).low
    assert stack["roc_auc"]["estimate"] == delong_auc_ci(y, s)[0]
    for level in ("stack", "slice"):
        for kind in ("roc", "pr", "confusion", "calibration"):
            png = tmp_path / f"{level}_{kind}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert f"ROC AUC {stack['roc_auc']['estimate']:.3f}" in md
    sens = stack["metrics"]["sensitivity"]
    assert f"{100 * sens['estimate']:.1f}% ({100 * sens['low']:.1f}–{100 * sens['high']:.1f})" in md
    with (tmp_path / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 60 and float(rows[3]["score"]) == s[3]


def test_one_class_level_is_reported_not_crashed(tmp_path: Path) -> None:
    report = write_report(
        tmp_path, [LevelData("stack", [False] * 5, [0.1, 0.2, 0.3, 0.6, 0.1], 0.5, "t")], [], {}
    )
    stack = report["levels"]["stack"]
    assert stack["roc_auc"] is None
    assert stack["metrics"]["sensitivity"]["estimate"] is None
    assert stack["metrics"]["specificity"]["estimate"] == 0.8
