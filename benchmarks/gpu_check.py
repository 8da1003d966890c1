"""The predictor's figures on one Keras backend: what ``benchmarks/gpu_check.sh`` prints.

    python benchmarks/gpu_check.py --backend jax --series DIR --bundle DIR [--bundle DIR]

For each bundle, on one series: the backend, device and precision; ``triage-model
predict``'s timings per stage (a fresh process, as an admin would run it); then, in this
process, the CNN's achieved TFLOP/s (median of three runs after a warm one), the peak GPU
memory where the backend reports it, and each reduced precision's study probability
against float32's. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parents[1]


def cnn_flops(cnn: Any) -> float:
    """Floating-point operations of one slice through the CNN's convolutions and dense layers.

    A multiply-add counts as two. Counted from the layers' shapes, so the figure is the
    same on every backend; batch normalisation, activations and pooling are left out
    (under 1 % of the work).
    """
    import keras

    total = 0.0
    for layer in _layers(cnn):
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, out_channels = layer.output.shape
            kh, kw = layer.kernel_size
            in_channels = layer.input.shape[-1] // layer.groups
            total += 2.0 * height * width * out_channels * kh * kw * in_channels
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.input.shape[-1] * layer.units
    return total


def _layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        found.extend(_layers(layer) if hasattr(layer, "layers") else [layer])
    return found


def cli_timings(bundle: Path, series: Path, precision: str) -> dict[str, Any]:
    """``triage-model predict --json`` in a fresh process on this backend."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "model",
            "predict",
            "--bundle",
            str(bundle),
            str(series),
            "--json",
            "--precision",
            precision,
        ],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    if out.returncode:
        raise SystemExit(f"triage-model predict failed:\n{out.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def peak_memory_gib(backend: str) -> str:
    """Peak GPU memory of this process, where the backend reports it."""
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
    return "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), required=True)
    parser.add_argument("--series", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, action="append", required=True)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--compare", nargs="*", default=["bfloat16", "float16"])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    os.environ["KERAS_BACKEND"] = args.backend
    sys.path.insert(0, str(ROOT))
    # Only warnings from the model package's log (not a bundle_loaded line per load).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from model.quiet import quiet_keras_backend

    quiet_keras_backend()
    from model.predict import Predictor, PredictorError

    files = sorted(p for p in args.series.iterdir() if p.suffix == ".dcm")
    for bundle in args.bundle:
        cli = cli_timings(bundle, args.series, args.precision)
        stages = ", ".join(f"{k} {v:.3f}" for k, v in cli["timings"].items())
        print(
            f"{bundle.name}: backend={cli['backend']} device={cli['device']} "
            f"precision={cli['precision']}; triage-model predict, {cli['slices_used']} "
            f"slices, seconds: {stages}",
            flush=True,
        )
        probabilities = {}
        for precision in [args.precision, *args.compare]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # untrained bundles warn
                loaded = time.perf_counter()
                try:
                    predictor = Predictor.load(
                        bundle, precision=precision, batch_size=args.batch_size
                    )
                except PredictorError as err:  # a precision this backend gets wrong
                    print(f"  {precision:8s} refused at load: {err}", flush=True)
                    continue
                loaded = time.perf_counter() - loaded
            predictor.predict(files)  # a warm run: caches, allocator pools
            runs = [predictor.predict(files) for _ in range(3)]
            cnn = statistics.median(r.timings["cnn"] for r in runs)
            total = statistics.median(r.timings["total"] for r in runs)
            # What the daemon's worker does while the series waits out stable_seconds
            # (worker.preprocess_early), off the end-to-end time.
            early = statistics.median(r.timings["read"] + r.timings["preprocess"] for r in runs)
            flops = (
                cnn_flops(predictor._models[0][0]) * runs[0].slices_used * len(predictor._models)
            )
            probabilities[precision] = runs[0].stack_probability
            print(
                f"  {precision:8s} in process: load {loaded:.1f} s, total {total:.3f} s "
                f"(read + preprocess {early:.3f} s, {early / total:.0%}), "
                f"CNN {cnn:.3f} s for {flops / 1e9:.1f} GFLOP = {flops / cnn / 1e12:.3f} "
                f"TFLOP/s (batch {args.batch_size}, peak memory "
                f"{peak_memory_gib(args.backend)}), study probability "
                f"{runs[0].stack_probability:.4f}",
                flush=True,
            )
        for precision in args.compare:
            if precision not in probabilities or args.precision not in probabilities:
                continue
            gap = abs(probabilities[precision] - probabilities[args.precision])
            print(
                f"  {precision} vs {args.precision}: study probability differs by {gap:.4f} "
                f"({'within' if gap <= 0.01 else 'OVER'} 0.01)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
