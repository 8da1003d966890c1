"""What training the production configuration costs: InceptionResNetV2 at 386, batch 48.

Times real optimiser steps of the slice CNN (Adam, binary cross-entropy) and the encoding
pass on preprocessed slices of a synthetic study, then extrapolates to one epoch and one
fold of a data set of the paper's size. It also times the CNN's forward pass over one
96-slice study, the part of inference that the hardware decides. Prints figures; asserts
nothing.

    python benchmarks/training_cost.py [--steps 3] [--batch 48] [--studies 600]
        [--precisions float32 bfloat16]

The model code is plain Keras 3, so the same script runs under any Keras backend
(``KERAS_BACKEND=tensorflow`` as the product ships, or ``jax`` / ``torch`` on a GPU host
that has those but no TensorFlow); the backend and device are printed first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def device_name() -> str:
    """The device Keras computes on, e.g. ``gpu (NVIDIA H100 80GB HBM3)`` or ``cpu``."""
    import keras

    backend = keras.config.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform} ({device.device_kind})"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"gpu ({torch.cuda.get_device_name(0)})"
        return "cpu"
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return f"gpu ({gpus[0].name})" if gpus else "cpu"


def _seconds(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls of ``fn`` (after the caller has warmed it up)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _measure(
    precision: str, x: np.ndarray, y: np.ndarray, study: np.ndarray, steps: int
) -> tuple[float, float]:
    """Seconds per slice of a training step, and of the CNN forward pass over ``study``."""
    import keras

    from model.network import NetworkConfig, build_networks, slice_encoder

    cnn, _ = build_networks(NetworkConfig(), weights=None, precision=precision, seed=0)
    cnn.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    cnn.train_on_batch(x, y)  # compile and build the optimiser state
    cnn.train_on_batch(x, y)
    train_per_slice = _seconds(lambda: cnn.train_on_batch(x, y), steps) / len(x)
    encoder = slice_encoder(cnn)
    encoder.predict(study, batch_size=32, verbose=0)  # compile
    per_study = _seconds(lambda: encoder.predict(study, batch_size=32, verbose=0), 3)
    keras.backend.clear_session()
    return train_per_slice, per_study


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed optimiser steps")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--studies", type=int, default=600, help="data set size to project to")
    parser.add_argument("--slices", type=int, default=96, help="slices per study")
    parser.add_argument("--positive-slice-fraction", type=float, default=0.1)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cnn-epochs", type=int, default=8)
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["float32"],
        choices=["float32", "bfloat16"],
        help="compute precisions to time (bfloat16: Keras' mixed_bfloat16 policy)",
    )
    args = parser.parse_args()

    import keras

    from model.preprocess import PreprocessConfig, preprocess_series
    from model.synthetic import StudyParams, generate_study, write_study

    print(f"keras {keras.__version__}, backend {keras.config.backend()}, device {device_name()}")
    # Real preprocessed slices, so the steps see what training sees.
    work = Path(tempfile.mkdtemp(prefix="triage-training-cost-"))
    written = write_study(generate_study(3, StudyParams(positive=True)), work)
    pre = preprocess_series(written.axial.paths, PreprocessConfig())
    real = pre.volume[pre.mask]
    x = np.stack([real[i % len(real)] for i in range(args.batch)]).astype(np.float32)
    y = (np.arange(args.batch) % 2).astype(np.float32)
    study = np.stack([real[i % len(real)] for i in range(args.slices)]).astype(np.float32)

    slices = args.studies * args.slices
    train_slices = slices * (args.folds - 1) / args.folds
    # Positives are copied until they match the negatives: the epoch nearly doubles.
    epoch_slices = train_slices * 2 * (1 - args.positive_slice_fraction)
    val_slices = slices / args.folds
    print(
        f"InceptionResNetV2 at 386x386x3, batch {args.batch}, best of {args.steps} timed steps; "
        f"projected to {args.studies} studies x {args.slices} slices, {args.folds} folds, "
        f"{args.cnn_epochs} CNN epochs"
    )
    for precision in args.precisions:
        train_per_slice, per_study = _measure(precision, x, y, study, args.steps)
        encode_per_slice = per_study / args.slices
        epoch = epoch_slices * train_per_slice + val_slices * encode_per_slice
        fold = args.cnn_epochs * epoch + slices * encode_per_slice
        print(
            f"{precision}: training step {train_per_slice * 1e3:.1f} ms per slice "
            f"({train_per_slice * args.batch:.3f} s per batch); CNN forward over one "
            f"{args.slices}-slice study {per_study:.2f} s ({encode_per_slice * 1e3:.1f} ms "
            f"per slice)"
        )
        print(
            f"{precision}: one CNN epoch {epoch / 3600:.2f} h, one fold (epochs + encodings) "
            f"{fold / 3600:.2f} h, all {args.folds} folds {args.folds * fold / 3600:.2f} h "
            f"(the sequence model adds minutes)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
