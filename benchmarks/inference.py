"""Print inference seconds per stage and the CNN's achieved GFLOP/s against this CPU's peak.

Run: ``python benchmarks/inference.py [--threads 2] [--studies 3] [--configs float32 bfloat16
float32+xla bfloat16+xla] [--backbones inception_resnet_v2 small] [--bundle model/bundles/demo]``.
Figures, not a test.

For each backbone it writes an untrained, seeded bundle (the production InceptionResNetV2 at
386x386 and the ``small`` CNN at its test size), plus any trained ``--bundle`` (the demo
bundle's worker stage: its own backbone, size and windows), synthetic 96-slice 512x512 studies,
and then, per precision / XLA setting, times read, preprocess, CNN and sequence on each
study. The CNN's FLOPs are counted from the model's convolution and dense layers (multiply
and add counted separately) and divided by its time. In the same process it times a large
float32 and bfloat16 matmul, this machine's dense peaks, and prints each setting's share of
the matching peak, and the largest study-probability difference from float32 (the weights
are untrained, so probabilities sit near 0.5; the difference still measures numerical
drift through the whole network).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from model.predict import configure_threads


def count_flops(model: Any) -> float:
    """Return FLOPs for one sample through a Keras model's Conv2D and Dense layers.

    Multiply and add count as two operations, as GFLOP/s peaks do. Batch norm,
    activations and pooling are left out: they are under 1 % of InceptionResNetV2's work.
    """
    import keras

    total = 0.0
    for layer in _leaf_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1] // layer.groups
            total += 2.0 * h * w * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.input.shape[-1] * layer.units
    return total


def _leaf_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            out.extend(_leaf_layers(layer))
        else:
            out.append(layer)
    return out


def matmul_peak(dtype: str, n: int = 4096, repeat: int = 5) -> float:
    """Return the best GFLOP/s of an n x n matmul in ``dtype`` over ``repeat`` runs."""
    import tensorflow as tf

    a = tf.random.stateless_normal((n, n), seed=(1, 2), dtype=tf.float32)
    b = tf.random.stateless_normal((n, n), seed=(3, 4), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    step = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y), tf.float32)))
    step(a, b).numpy()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        step(a, b).numpy()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def _write_studies(root: Path, count: int, slices: int, matrix: int) -> list[list[Path]]:
    from model.synthetic import StudyParams, generate_study, write_study

    studies = []
    for seed in range(count):
        phantom = generate_study(
            100 + seed, StudyParams(positive=seed % 2 == 0, n_slices=slices, matrix=matrix)
        )
        studies.append(list(write_study(phantom, root / f"s{seed}").axial.paths))
    return studies


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--slices", type=int, default=96)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["float32", "bfloat16", "float32+xla", "bfloat16+xla"],
        help="precision, optionally +xla",
    )
    parser.add_argument("--backbones", nargs="*", default=["inception_resnet_v2", "small"])
    parser.add_argument(
        "--bundle",
        type=Path,
        action="append",
        default=[],
        help="also time this trained bundle (repeatable; e.g. model/bundles/demo)",
    )
    args = parser.parse_args()
    # Before anything touches TensorFlow: the thread count cannot change afterwards.
    configure_threads(args.threads)
    import tensorflow as tf

    from model.bundle import init_bundle, load_bundle
    from model.network import slice_encoder
    from model.predict import Predictor, UntrainedBundleWarning

    warnings.simplefilter("ignore", UntrainedBundleWarning)
    devices = [d.device_type for d in tf.config.list_physical_devices()]
    print(
        f"tensorflow {tf.__version__}, devices {devices}, threads {args.threads}, "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')}"
    )
    peaks = {"float32": matmul_peak("float32"), "bfloat16": matmul_peak("bfloat16")}
    print(
        f"matmul 4096x4096 peak: float32 {peaks['float32']:.0f} GFLOP/s, bfloat16 "
        f"{peaks['bfloat16']:.0f} GFLOP/s (ratio {peaks['bfloat16'] / peaks['float32']:.2f})"
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        studies = _write_studies(root, args.studies, args.slices, args.matrix)
        print(
            f"{args.studies} synthetic studies, {args.slices} slices {args.matrix}x{args.matrix}, "
            f"written in {time.perf_counter() - t0:.1f} s"
        )
        header = (
            f"{'backbone':<20} {'config':<13} {'slices':>6} {'read':>6} {'prep':>6} {'cnn':>7} "
            f"{'seq':>6} {'total':>7} {'s/slice':>7} {'GFLOP/s':>8} {'%peak':>6} "
            f"{'non-CNN':>7} {'max|dp|':>8}"
        )
        print(header)
        print("-" * len(header))
        runs = [(b, root / f"bundle_{b}", True) for b in args.backbones]
        runs += [(path.name, path, False) for path in args.bundle]
        for backbone, bundle_dir, untrained in runs:
            if untrained:
                bundle = init_bundle(bundle_dir, backbone=backbone, num_slices=args.slices, seed=0)
            else:
                bundle = load_bundle(bundle_dir)
            reference: list[float] | None = None
            flops = None
            for config in args.configs:
                precision, _, xla = config.partition("+")
                predictor = Predictor.load(
                    bundle_dir,
                    precision=precision,
                    threads=args.threads,
                    batch_size=args.batch_size,
                    jit_compile=xla == "xla",
                )
                if flops is None:
                    flops = count_flops(slice_encoder(predictor._models[0][0]))
                    print(
                        f"# {backbone} at {bundle.network_config().input_size}: "
                        f"{flops / 1e9:.2f} GFLOP per slice"
                    )
                results = [predictor.predict(files) for files in studies]
                probabilities = [r.stack_probability for r in results]
                if reference is None:
                    reference = probabilities
                drift = max(abs(a - b) for a, b in zip(probabilities, reference, strict=True))
                timing = {
                    key: statistics.median(r.timings[key] for r in results)
                    for key in ("read", "preprocess", "cnn", "sequence", "total")
                }
                used = statistics.median(r.slices_used for r in results)
                gflops = flops * used / timing["cnn"] / 1e9
                share = gflops / peaks[precision] * 100
                non_cnn = 1 - timing["cnn"] / timing["total"]
                print(
                    f"{backbone:<20} {config:<13} {used:>6.0f} {timing['read']:>6.2f} "
                    f"{timing['preprocess']:>6.2f} {timing['cnn']:>7.2f} "
                    f"{timing['sequence']:>6.3f} {timing['total']:>7.2f} "
                    f"{timing['cnn'] / used:>7.3f} {gflops:>8.1f} {share:>5.0f}% "
                    f"{non_cnn:>6.1%} {drift:>8.1e}"
                )
                del predictor
    print("times are medians over the studies; max|dp| is the largest study-probability")
    print("difference from the first config; %peak is against the matmul peak of its dtype.")


if __name__ == "__main__":
    main()
