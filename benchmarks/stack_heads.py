"""Out-of-fold stack and slice ROC AUC of each stack head, on one trained slice CNN.

The sequence stage alone is retrained for each head (``triage-model train`` reuses a
finished slice CNN and its encodings when only the stack head changes), so the heads are
compared on the same CNN, the same folds and the same seed: an ablation in minutes where
retraining the CNN would take hours.

    python benchmarks/stack_heads.py --config model/bundles/demo/training.yaml \\
        --trained WORK/bundle --data DIR [--heads reference attention top_slices]

WORK/bundle is a finished ``triage-model train --out``; its ``work/fold*`` folders (kept
weights, ``slice_cnn.json``, ``encodings.npz``) are copied, never changed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the training YAML")
    parser.add_argument("--trained", type=Path, required=True, help="a finished train --out")
    parser.add_argument("--data", type=Path, required=True, help="the training data folder")
    parser.add_argument("--labels", type=Path, help="train.csv (default DATA/train.csv)")
    parser.add_argument("--heads", nargs="+", default=["reference", "attention", "top_slices"])
    args = parser.parse_args()
    base = yaml.safe_load(args.config.read_text())
    folds = sorted((args.trained / "work").glob("fold*"))
    if not folds or not all((f / "encodings.npz").is_file() for f in folds):
        sys.exit(f"{args.trained}/work has no finished slice CNN stage (encodings.npz)")
    print(f"{'stack head':<12} {'OOF stack AUC (95% CI)':<26} {'OOF slice AUC':<14} n")
    for head in args.heads:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bundle"
            for fold in folds:
                keep = ("slice_cnn.best.weights.h5", "slice_cnn.json", "encodings.npz")
                (out / "work" / fold.name).mkdir(parents=True)
                for name in keep:
                    shutil.copy2(fold / name, out / "work" / fold.name / name)
            if (args.trained / "cache").exists():
                (out / "cache").symlink_to((args.trained / "cache").resolve())
            config = Path(tmp) / "training.yaml"
            network = {**base["network"], "stack_head": head}
            config.write_text(yaml.safe_dump({**base, "network": network}))
            labels = args.labels or args.data / "train.csv"
            subprocess.run(
                [
                    sys.executable, "-m", "model", "train", "--config", str(config),
                    "--data", str(args.data), "--labels", str(labels), "--out", str(out),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            oof = json.loads((out / "manifest.json").read_text())["metrics"]["out_of_fold"]
            stack, slices = oof["stack"]["roc_auc"], oof["slice"]["roc_auc"]
            ci = f"{stack['estimate']:.3f} ({stack['low']:.3f}-{stack['high']:.3f})"
            n = oof["stack"]["n"]
            print(f"{head:<12} {ci:<26} {slices['estimate']:<14.3f} {n}", flush=True)


if __name__ == "__main__":
    main()
