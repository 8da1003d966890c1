"""Cost of the receiver's integrity check per instance: prints figures, not pass/fail.

The check (``triage.receive.integrity.check_dataset``) runs on every C-STORE before Success. It
is timed here on the files of a synthetic CT series, next to the header parse that the
receiver already does for each instance, in each transfer syntax asked for.

Usage: ``python benchmarks/integrity.py [--slices 48] [--matrix 512] [--repeat 5]
[--syntax explicit implicit rle]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from model.synthetic import StudyParams, WriteOptions, generate_study, write_study
from triage.receive.header import parse_header
from triage.receive.integrity import check_dataset, dataset_offset


def _per_instance_us(blobs: list[bytes], run: Callable[[bytes], object], repeat: int) -> float:
    """Median over ``repeat`` passes of the mean microseconds per instance."""
    passes = []
    for _ in range(repeat):
        start = time.perf_counter()
        for blob in blobs:
            run(blob)
        passes.append((time.perf_counter() - start) / len(blobs) * 1e6)
    return statistics.median(passes)


def main() -> None:
    """Write one synthetic series per syntax; time the check and the header parse."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--syntax", nargs="+", default=["explicit", "implicit", "rle"])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    phantom = generate_study(args.seed, StudyParams(n_slices=args.slices, matrix=args.matrix))
    print(f"{args.slices} slices of {args.matrix}x{args.matrix}; median of {args.repeat} passes")
    print(f"{'syntax':10} {'KiB/file':>9} {'check µs':>9} {'header µs':>10} {'check/header':>13}")
    for syntax in args.syntax:
        with tempfile.TemporaryDirectory() as tmp:
            written = write_study(phantom, tmp, WriteOptions(transfer_syntax=syntax))
            blobs = [Path(p).read_bytes() for p in written.axial.paths]
        uid = parse_header(blobs[0]).transfer_syntax_uid
        sop_class = parse_header(blobs[0]).sop_class_uid

        def check(blob: bytes, uid: str = uid, sop_class: str = sop_class) -> None:
            check_dataset(blob, dataset_offset(blob), uid, sop_class)

        check_us = _per_instance_us(blobs, check, args.repeat)
        header_us = _per_instance_us(blobs, parse_header, args.repeat)
        size = statistics.mean(len(b) for b in blobs) / 1024
        print(
            f"{syntax:10} {size:9.0f} {check_us:9.1f} {header_us:10.1f} "
            f"{check_us / header_us:12.2f}×"
        )


if __name__ == "__main__":
    main()
