"""Out-of-fold stack ROC AUC of a training run, split by what its positive studies hold.

Which emboli does a trained fold find? Each group of positives (central PE or not, and
by how many slices are positive, a proxy for the emboli's length) is scored against all
of the fold's negatives. Reads what ``triage-model train`` leaves in
``RUN/work/fold<K>/done.json`` and the RSNA-style labels of the training set.

Usage: python benchmarks/oof_by_extent.py RUN LABELS_CSV [--fold K]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from sklearn.metrics import roc_auc_score

# Positive-slice counts (slices 3 mm apart) that bound each group: [low, high).
EXTENT_BINS = ((0, 4), (4, 8), (8, 16), (16, 10_000))


def _auc(positives: list[dict[str, Any]], negatives: list[float]) -> str:
    if not positives:
        return "-"
    scores = [p["stack"] for p in positives]
    auc = roc_auc_score([1] * len(scores) + [0] * len(negatives), scores + negatives)
    return f"{auc:.3f} (n={len(scores)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the --out folder of triage-model train")
    parser.add_argument("labels", type=Path, help="the training set's labels CSV")
    parser.add_argument("--fold", type=int, default=0)
    args = parser.parse_args()

    central: dict[str, bool] = {}
    with args.labels.open() as f:
        for row in csv.DictReader(f):
            uid = row["SeriesInstanceUID"]
            central[uid] = central.get(uid, False) or row["central_pe"] == "1"
    done = json.loads((args.run / "work" / f"fold{args.fold}" / "done.json").read_text())
    oof = done["oof"]
    negatives = [o["stack"] for o in oof if not o["label"]]
    positives = [o for o in oof if o["label"]]
    print(f"fold {args.fold}: {len(positives)} positive, {len(negatives)} negative studies")
    print(f"all positives        {_auc(positives, negatives)}")
    is_central = [central.get(o["series_instance_uid"], False) for o in positives]
    central_pe = [o for o, c in zip(positives, is_central, strict=True) if c]
    peripheral = [o for o, c in zip(positives, is_central, strict=True) if not c]
    print(f"central PE           {_auc(central_pe, negatives)}")
    print(f"not central          {_auc(peripheral, negatives)}")
    for low, high in EXTENT_BINS:
        group = [o for o in positives if low <= sum(o["slice_labels"]) < high]
        label = f"{low}+" if high >= 10_000 else f"{low}-{high - 1}"
        print(f"{label:>6} positive slices {_auc(group, negatives)}")


if __name__ == "__main__":
    main()
