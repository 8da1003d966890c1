"""Whether the heat maps point at the emboli, and what they cost, on synthetic positives.

For each of N synthetic positive studies (the generator knows every embolus voxel), the
bundle predicts, :class:`model.explain.Explainer` makes heat maps for the top-K flagged
slices (``--method``: Grad-CAM sharpened by the input gradient, the default, or Grad-CAM
alone), and each map's peak is measured against the emboli: its 3-D distance in
mm (slice position and in-plane) to the nearest embolus voxel. A peak within
``--radius-mm`` counts as a hit. Also printed: how many explained slices hold an embolus
at all (the slices the model flags are not all true), and the heat maps' time against the
model's own (read, preprocess, CNN and sequence model).

    python benchmarks/heatmap_localisation.py [--bundle DIR] [--n 20] [--difficulty easy]
        [--top-k 8] [--radius-mm 5] [--method grad-cam-x-gradient|grad-cam] [--ignore-threshold]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from model.explain import METHODS, Explainer, SliceHeatmap
from model.predict import Predictor
from model.synthetic import Phantom, StudyParams, WrittenSeries, generate_study, write_study

DEMO_BUNDLE = Path(__file__).resolve().parent.parent / "model" / "bundles" / "demo"


def peak_distances_mm(
    phantom: Phantom, series: WrittenSeries, heatmaps: list[SliceHeatmap]
) -> list[float]:
    """3-D distance in mm from each heat map's peak to the nearest embolus voxel."""
    # Slices are written one per phantom slice, in order.
    distance = phantom.embolus_distance_mm()
    index = {uid: k for k, uid in enumerate(series.sop_instance_uids)}
    return [float(distance[(index[h.sop_instance_uid], *h.peak)]) for h in heatmaps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEMO_BUNDLE)
    parser.add_argument("--n", type=int, default=20, help="positive studies")
    parser.add_argument("--difficulty", default="easy", help="easy, realistic or hard")
    parser.add_argument("--top-k", type=int, default=8, help="slices explained per study")
    parser.add_argument("--radius-mm", type=float, default=5.0, help="a hit is this close")
    parser.add_argument("--method", choices=METHODS, default=METHODS[0])
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--ignore-threshold",
        action="store_true",
        help="explain the top K slices even below the slice threshold (to time an untrained "
        "bundle, such as an InceptionResNetV2 from triage-model init-bundle)",
    )
    args = parser.parse_args()

    predictor = Predictor.load(args.bundle, threads=args.threads)
    explainer = Explainer(predictor.slice_cnns, batch_size=predictor.batch_size, method=args.method)
    threshold = None if args.ignore_threshold else float(predictor.bundle.thresholds["slice"].value)
    distances: list[float] = []
    on_embolus = 0
    flagged_studies = 0
    model_s: list[float] = []
    heatmap_s: list[float] = []
    print("| seed | stack p | explained | hold an embolus | peak within radius | median mm |")
    print("| --- | --- | --- | --- | --- | --- |")
    for seed in range(args.first_seed, args.first_seed + args.n):
        phantom = generate_study(seed, StudyParams(positive=True, difficulty=args.difficulty))
        with tempfile.TemporaryDirectory() as folder:
            axial = write_study(phantom, folder).series[0]
            start = time.perf_counter()
            series = predictor.preprocess(axial.paths)
            prediction = predictor.predict_preprocessed(series)
            model_s.append(time.perf_counter() - start)
        if not heatmap_s:
            # The first call traces the backbone view; the predictor paid that at load.
            explainer.explain(series, prediction.slice_probabilities, top_k=1, threshold=None)
        explanation = explainer.explain(
            series, prediction.slice_probabilities, top_k=args.top_k, threshold=threshold
        )
        heatmap_s.append(explanation.seconds)
        flagged_studies += prediction.positive
        found = peak_distances_mm(phantom, axial, explanation.heatmaps)
        distances += found
        index = {uid: k for k, uid in enumerate(axial.sop_instance_uids)}
        holding = sum(
            bool(phantom.embolus_mask[index[h.sop_instance_uid]].any())
            for h in explanation.heatmaps
        )
        on_embolus += holding
        hits = sum(d <= args.radius_mm for d in found)
        median = f"{np.median(found):.1f}" if found else "-"
        print(
            f"| {seed} | {prediction.stack_probability:.2f} | {len(found)} | {holding} "
            f"| {hits} | {median} |"
        )
    hits = sum(d <= args.radius_mm for d in distances)
    total = len(distances)
    print()
    print(
        f"bundle {predictor.bundle.name} {predictor.bundle.version}, {args.difficulty} "
        f"positives: {args.n} ({flagged_studies} flagged positive by the stack threshold); "
        f"heat maps: {args.method}"
    )
    rule = "" if args.ignore_threshold else " at or above the slice threshold"
    print(f"explained slices (top {args.top_k}{rule}): {total}")
    if total:
        print(f"  holding an embolus voxel: {on_embolus} ({on_embolus / total:.1%})")
        print(
            f"  heat-map peak within {args.radius_mm:g} mm of an embolus voxel (3-D): "
            f"{hits} ({hits / total:.1%})"
        )
        if on_embolus:
            print(f"  of the slices holding an embolus: {hits / on_embolus:.1%} at most")
    model = float(np.median(model_s))
    heat = float(np.median(heatmap_s))
    print(
        f"time per study (median): model {model * 1000:.0f} ms (read, preprocess, CNN, "
        f"sequence), heat maps {heat * 1000:.0f} ms = {heat / model:.1%} of the model's"
    )


if __name__ == "__main__":
    main()
