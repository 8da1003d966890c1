"""Print how long a 120-slice synthetic study takes: the phantom alone, and with its DICOM files.

Run: ``python benchmarks/synth.py [--repeat N] [--transfer-syntax explicit]``. Figures only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from model.synthetic import StudyParams, WriteOptions, generate_study, write_study


def main() -> None:
    """Time phantom generation and DICOM writing of 120-slice 512x512 studies."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--transfer-syntax", default="explicit")
    args = parser.parse_args()
    params = StudyParams(positive=True, n_slices=120)
    generate_study(0, StudyParams(n_slices=8, matrix=64))  # warm imports and caches
    phantom_s, total_s = [], []
    for seed in range(args.repeat):
        t0 = time.perf_counter()
        phantom = generate_study(seed, params)
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            write_study(phantom, tmp, WriteOptions(transfer_syntax=args.transfer_syntax))
        t2 = time.perf_counter()
        phantom_s.append(t1 - t0)
        total_s.append(t2 - t0)
    print(f"cpus available: {len(os.sched_getaffinity(0))}")
    print(
        f"phantom only, 120 slices 512x512: {min(phantom_s):.2f} s best, "
        f"{sum(phantom_s) / len(phantom_s):.2f} s mean of {args.repeat}"
    )
    print(
        f"phantom + DICOM ({args.transfer_syntax}): {min(total_s):.2f} s best, "
        f"{sum(total_s) / len(total_s):.2f} s mean of {args.repeat}"
    )


if __name__ == "__main__":
    main()
