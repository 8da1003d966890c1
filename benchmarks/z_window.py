"""How many labelled emboli each z-window lets the model see, on a labelled data set.

For every positive series, the positive slices (``pe_present_on_image``) that land in the
model's ``num_slices`` input under ``z_window: top`` (the authors' code) and ``lungs``
(the window with the most chest cavity). A positive series none of whose positive slices
is in the window cannot be found by the model, whatever it learns.

    python benchmarks/z_window.py --data DIR [--num-slices 96] [--limit N]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from model.labels import read_labels
from model.preprocess import PreprocessConfig, SeriesRejectedError, preprocess_series
from model.training.data import series_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="RSNA-layout folder")
    parser.add_argument("--labels", type=Path, help="train.csv (default DIR/train.csv)")
    parser.add_argument("--num-slices", type=int, default=96)
    parser.add_argument("--limit", type=int, help="at most this many positive series")
    args = parser.parse_args()
    labels = read_labels(args.labels or args.data / "train.csv")
    # Small input: only which slices are chosen matters here, not the image.
    base = PreprocessConfig(num_slices=args.num_slices, input_size=32, channels=1, crop=True)
    configs = {"top": base, "lungs": replace(base, z_window="lungs")}
    seen = {name: 0 for name in configs}
    lost = {name: 0 for name in configs}
    total = series = 0
    positives = [s for s in labels.values() if s.positive and not s.indeterminate]
    for item in positives[: args.limit]:
        files = series_files(args.data, item)
        wanted = {sop for sop, positive in item.image_labels.items() if positive}
        if not files or not wanted:
            continue
        try:
            chosen = {
                name: set(preprocess_series(files, config).sop_instance_uids)
                for name, config in configs.items()
            }
        except SeriesRejectedError:
            continue
        series += 1
        total += len(wanted)
        for name, sops in chosen.items():
            seen[name] += len(wanted & sops)
            lost[name] += not (wanted & sops)
    print(f"{series} positive series, {total} positive slices, window of {args.num_slices}")
    print("| z_window | positive slices in the window | positive series with none in it |")
    print("| --- | --- | --- |")
    for name in configs:
        share = seen[name] / total if total else float("nan")
        print(f"| {name} | {seen[name]} ({100 * share:.1f}%) | {lost[name]} |")


if __name__ == "__main__":
    main()
