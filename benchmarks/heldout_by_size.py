"""Held-out stack ROC AUC split by how large each positive study's biggest embolus is.

A held-out report (``triage-model evaluate``) gives one AUC over all positives. Which
positives does the bundle miss? The synthetic held-out set's phantoms are generated again
from the arguments it was made with (:func:`model.synthetic.plan_dataset`; their embolus
voxels are not in the DICOM files), and each positive is put in a group by its largest
embolus cross-section on any one slice, in mm² (source voxels times the pixel area). Each
group is scored against all the negatives, with DeLong's 95% CI.

    python benchmarks/heldout_by_size.py PREDICTIONS_CSV --studies 200 --seed 2026
        [--difficulty realistic] [--positive-fraction 0.5] [--workers 2]

PREDICTIONS_CSV is the report's ``predictions.csv``; the synthesis arguments must be the
ones the held-out set was made with (``reproduce.sh``: 200 realistic studies of seed 2026).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from model.parallel import process_map
from model.stats import delong_auc_ci
from model.synthetic import PlannedStudy, generate_study, plan_dataset

# Largest cross-section (mm²) bounding each group, [low, high). A segmental artery 5 mm
# across has a lumen of about 20 mm²; at the demo bundle's 1.6 mm per input pixel, 10 mm²
# is four input pixels.
AREA_BINS_MM2: tuple[tuple[float, float], ...] = (
    (0.0, 10.0),
    (10.0, 20.0),
    (20.0, 40.0),
    (40.0, 80.0),
    (80.0, 1e9),
)


def largest_section_mm2(study: PlannedStudy) -> tuple[str, float]:
    """(StudyInstanceUID, largest embolus cross-section in mm² on one slice)."""
    phantom = generate_study(study.seed, study.params)
    voxels = int(phantom.embolus_mask.sum(axis=(1, 2)).max())
    return study.identity.study_instance_uid, voxels * phantom.geometry.pixel_spacing**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path, help="a report's predictions.csv")
    parser.add_argument("--studies", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--difficulty", default="realistic")
    parser.add_argument("--positive-fraction", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--raw", action="store_true", help="score the uncalibrated stack probability"
    )
    args = parser.parse_args()

    column = "raw_stack_probability" if args.raw else "stack_probability"
    with open(args.predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    score = {r["study_instance_uid"]: float(r[column]) for r in rows}
    label = {r["study_instance_uid"]: int(r["label"]) for r in rows}
    plan = plan_dataset(args.studies, args.positive_fraction, args.seed, args.difficulty)
    planned = {s.identity.study_instance_uid for s in plan}
    if planned != set(score):
        raise SystemExit(
            f"{len(planned ^ set(score))} studies differ between the plan and the "
            f"predictions: give the arguments the held-out set was synthesised with"
        )
    positives = [s for s in plan if s.params.positive]
    sections = dict(process_map(largest_section_mm2, positives, args.workers))
    negatives = [score[u] for u in score if not label[u]]

    print(f"{args.predictions}: {len(positives)} positives, {len(negatives)} negatives ({column})")
    print("| largest embolus section | positives | stack ROC AUC (95% CI) | median probability |")
    print("| --- | --- | --- | --- |")
    groups = [(f"{lo:g}–{hi:g} mm²", lo, hi) for lo, hi in AREA_BINS_MM2[:-1]]
    groups += [(f"≥ {AREA_BINS_MM2[-1][0]:g} mm²", *AREA_BINS_MM2[-1]), ("all", 0.0, 1e9)]
    for name, low, high in groups:
        group = [score[u] for u, area in sections.items() if low <= area < high]
        if len(group) < 2:
            print(f"| {name} | {len(group)} | - | - |")
            continue
        y = np.r_[np.ones(len(group)), np.zeros(len(negatives))]
        auc, ci_low, ci_high = delong_auc_ci(y, np.r_[group, negatives])
        print(
            f"| {name} | {len(group)} | {auc:.3f} ({ci_low:.3f}–{ci_high:.3f}) "
            f"| {np.median(group):.3f} |"
        )


if __name__ == "__main__":
    main()
