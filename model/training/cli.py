"""``triage-model train``, ``evaluate`` and ``compare``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model.cli_types import add_workers, non_negative_int


def add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``train``."""
    p = sub.add_parser(
        "train",
        help="train a bundle with five-fold cross-validation (or a separate validation "
        "set) from weak labels",
        description="Preprocess every labelled series once (cached), train the slice CNN and "
        "the sequence model per fold (a finished fold is not trained again when rerun), or "
        "once on every series with --validation-data, fit the calibrator and pick thresholds "
        "by the Youden index on the out-of-fold (or validation-set) predictions, and write "
        "the bundle. "
        "TensorBoard logs go to OUT/tensorboard.",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="training.yaml",
        help="hyper-parameters (default: the paper's; see training.example.yaml)",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="studies in the RSNA layout DIR/<StudyUID>/<SeriesUID>/*.dcm",
    )
    p.add_argument(
        "--labels", type=Path, required=True, metavar="CSV", help="RSNA-style labels (train.csv)"
    )
    p.add_argument(
        "--patients",
        type=Path,
        metavar="CSV",
        help="StudyInstanceUID,PatientID (default: DIR/patients.csv, else headers)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="BUNDLE_DIR")
    add_workers(p, "preprocess series into the cache")
    p.add_argument(
        "--fold",
        type=non_negative_int,
        metavar="K",
        help="train fold K only (e.g. one process per GPU); a last run without --fold "
        "reuses the finished folds and writes the bundle",
    )
    p.add_argument(
        "--validation-data",
        type=Path,
        metavar="DIR",
        help="a separate validation set (its own studies and patients) instead of folds: one "
        "model trains on every --data series, and DIR picks its kept epochs and fits the "
        "calibrator and thresholds",
    )
    p.add_argument(
        "--validation-labels",
        type=Path,
        metavar="CSV",
        help="the labels of --validation-data (default: DIR/train.csv)",
    )
    p.add_argument(
        "--cache-only",
        action="store_true",
        help="preprocess the series into OUT/cache and stop (before training folds in parallel)",
    )
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from model.training.config import load_training_config
    from model.training.run import train

    validation = None
    if args.validation_data is not None:
        labels = args.validation_labels or args.validation_data / "train.csv"
        validation = (args.validation_data, labels)
    elif args.validation_labels is not None:
        raise ValueError("--validation-labels needs --validation-data")
    bundle = train(
        load_training_config(args.config),
        args.data,
        args.labels,
        args.out,
        args.patients,
        workers=args.workers,
        only_fold=args.fold,
        cache_only=args.cache_only,
        validation=validation,
    )
    if bundle is None:
        done = "series preprocessed" if args.cache_only else f"fold {args.fold} trained"
        print(f"{done} in {args.out}; run without --fold or --cache-only to write the bundle")
        return 0
    report = json.loads((args.out / "training_report.json").read_text())
    kind = "out_of_fold" if "out_of_fold" in report else "validation"
    auc = report[kind]["stack"].get("roc_auc") or {}
    print(f"bundle {bundle.name} {bundle.version} written to {args.out}")
    print(
        f"series {report['data']['series']} ({report['data']['positive_series']} positive), "
        f"excluded {len(report['data']['excluded'])}"
    )
    if auc:
        print(
            f"{kind.replace('_', '-')} stack ROC AUC {auc['estimate']:.3f} "
            f"({auc['low']:.3f}-{auc['high']:.3f}); thresholds: "
            f"stack {bundle.thresholds['stack'].value:.4f}, "
            f"slice {bundle.thresholds['slice'].value:.4f}"
        )
    return 0


def add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``evaluate``."""
    p = sub.add_parser(
        "evaluate",
        help="evaluate a bundle on labelled data, as the paper does",
        description="Writes ROC and PR curves, confusion matrices and calibration plots (PNG), "
        "accuracy/sensitivity/specificity/PPV/NPV with Wilson CIs, the Youden threshold, "
        "predictions.csv, report.md and report.json, at the stack and slice levels.",
    )
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, metavar="DIR")
    p.add_argument("--labels", type=Path, required=True, metavar="CSV")
    p.add_argument("--out", type=Path, required=True, metavar="REPORT_DIR")
    p.add_argument(
        "--precision", choices=["float32", "bfloat16"], help="override the bundle's precision"
    )
    add_workers(p, "read and preprocess series while the network scores others")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from model.training.evaluate import evaluate

    report = evaluate(
        args.bundle, args.data, args.labels, args.out, args.precision, workers=args.workers
    )
    for level, m in report["levels"].items():
        auc = m.get("roc_auc")
        text = (
            f"ROC AUC {auc['estimate']:.3f} ({auc['low']:.3f}-{auc['high']:.3f})" if auc else "n/a"
        )
        print(f"{level}: n={m['n']} positive={m['n_positive']} {text}")
    print(f"report written to {args.out / 'report.md'}")
    return 0


def add_compare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``compare``."""
    p = sub.add_parser(
        "compare",
        help="DeLong's test between two bundles on the same labelled data",
        description="Paired DeLong test of the ROC AUCs of bundle A and bundle B, at the stack "
        "and slice levels, as the paper compares Model A and Model B.",
    )
    p.add_argument(
        "--bundle", type=Path, action="append", required=True, help="give twice: A then B"
    )
    p.add_argument("--data", type=Path, required=True, metavar="DIR")
    p.add_argument("--labels", type=Path, required=True, metavar="CSV")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from model.training.evaluate import compare

    if len(args.bundle) != 2:
        raise ValueError("give --bundle exactly twice (A, then B)")
    result = compare(args.bundle[0], args.bundle[1], args.data, args.labels)
    if args.json:
        print(json.dumps(result))
        return 0
    for level in ("stack", "slice"):
        r = result[level]
        print(
            f"{level}: AUC A {r['auc_a']:.3f} vs B {r['auc_b']:.3f}, z {r['z']:.3f}, p {r['p']:.4g}"
        )
    return 0
