"""Time read + preprocess of a synthetic study: prints seconds per stage, not pass/fail.

Usage: ``python benchmarks/preprocess.py [--slices 96] [--matrix 512] [--repeat 3]
[--syntax explicit] [--threads N]``; ``--threads`` as the worker's predictor uses them
(every core by default): the per-slice steps in threads, compressed pixel data decoded in
as many processes.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from model.parallel import available_cores, spawned_pool
from model.preprocess import PreprocessConfig, preprocess_series
from model.synthetic import StudyParams, WriteOptions, generate_study, write_study


def main() -> None:
    """Write one synthetic study and time the default preprocessing on it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=96)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--syntax", default="explicit")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-segment", action="store_true")
    parser.add_argument("--threads", type=int, default=available_cores())
    args = parser.parse_args()
    phantom = generate_study(args.seed, StudyParams(n_slices=args.slices, matrix=args.matrix))
    config = PreprocessConfig(segment=not args.no_segment)
    decoders = spawned_pool(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        written = write_study(phantom, tmp, WriteOptions(transfer_syntax=args.syntax))
        files = list(written.axial.paths)
        for i in range(args.repeat):
            start = time.perf_counter()
            result = preprocess_series(files, config, args.threads, decoders)
            total = time.perf_counter() - start
            print(
                f"run {i}: {args.slices}x{args.matrix}x{args.matrix} {args.syntax}, "
                f"{args.threads} threads: "
                f"read {result.timings['read']:.3f} s, "
                f"preprocess {result.timings['preprocess']:.3f} s, total {total:.3f} s; "
                f"output {result.volume.shape}"
            )


if __name__ == "__main__":
    main()
