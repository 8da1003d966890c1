"""``triage-model stats``: the paper's statistics for scripts (Wilson CIs, DeLong's test)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from model.cli_types import non_negative_int
from model.stats import delong_test, diagnostic_metrics


def add_stats(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``stats ci`` and ``stats delong``."""
    p = sub.add_parser(
        "stats",
        help="confidence intervals and DeLong's test, as R computes them",
        description="Statistics as in the paper. Proportions are in [0, 1].",
    )
    stats_sub = p.add_subparsers(dest="stats_command", metavar="STAT", required=True)

    ci = stats_sub.add_parser(
        "ci",
        help="accuracy, sensitivity, specificity, PPV, NPV with 95%% Wilson CIs",
        description="Wilson score intervals with continuity correction (Newcombe's method 4), "
        "identical to R's prop.test(x, n, correct=TRUE).",
    )
    for name in ("tp", "fn", "tn", "fp"):
        ci.add_argument(f"--{name}", type=non_negative_int, required=True, metavar="N")
    ci.add_argument("--confidence", type=float, default=0.95, help="default 0.95")
    ci.add_argument("--json", action="store_true", help="print JSON for scripts")
    ci.set_defaults(func=_run_ci)

    dl = stats_sub.add_parser(
        "delong",
        help="DeLong's test for two paired ROC AUCs",
        description="Paired DeLong test of two scores on the same cases, as pROC's "
        "roc.test(method='delong', paired=TRUE); AUC CIs as ci.auc(method='delong'). "
        "Higher scores mean positive.",
    )
    dl.add_argument(
        "--csv",
        type=Path,
        required=True,
        metavar="FILE",
        help="columns label,score_a,score_b; label is 0 or 1",
    )
    dl.add_argument("--json", action="store_true", help="print JSON for scripts")
    dl.set_defaults(func=_run_delong)


def _run_ci(args: argparse.Namespace) -> int:
    metrics = diagnostic_metrics(args.tp, args.fn, args.tn, args.fp, args.confidence)
    if args.json:
        print(json.dumps({k: v.to_dict() for k, v in metrics.items()}))
        return 0
    for name, value in metrics.items():
        print(f"{name:12s} {value.estimate:.4f}  ({value.low:.4f}–{value.high:.4f})")
    return 0


def _read_delong_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"label", "score_a", "score_b"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = list(reader)
    try:
        labels = np.array([int(r["label"]) for r in rows])
        a = np.array([float(r["score_a"]) for r in rows])
        b = np.array([float(r["score_b"]) for r in rows])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return labels, a, b


def _run_delong(args: argparse.Namespace) -> int:
    labels, a, b = _read_delong_csv(args.csv)
    result = delong_test(labels, a, b)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"AUC A {result.auc_a:.4f} ({result.auc_a_ci[0]:.4f}–{result.auc_a_ci[1]:.4f})")
    print(f"AUC B {result.auc_b:.4f} ({result.auc_b_ci[0]:.4f}–{result.auc_b_ci[1]:.4f})")
    print(f"z = {result.z:.4f}, p = {result.p:.4g} (two-sided, paired DeLong)")
    return 0
