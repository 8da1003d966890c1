"""What training the production configuration costs: InceptionResNetV2 at 386, batch 48.

Times real optimiser steps of the slice CNN (Adam, binary cross-entropy) and the encoding
pass on preprocessed slices of synthetic studies, then extrapolates to one epoch and one
fold of a data set of the paper's size. Prints figures; asserts nothing.

    python benchmarks/training_cost.py [--steps 3] [--batch 48] [--studies 600]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed optimiser steps")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--studies", type=int, default=600, help="data set size to project to")
    parser.add_argument("--slices", type=int, default=96, help="slices per study")
    parser.add_argument("--positive-slice-fraction", type=float, default=0.1)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cnn-epochs", type=int, default=8)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from model.network import NetworkConfig, build_networks, slice_encoder
    from model.preprocess import PreprocessConfig, preprocess_series
    from model.synthetic import StudyParams, generate_study, write_study

    # A few real preprocessed slices, so the step sees what training sees.
    work = Path(tempfile.mkdtemp(prefix="triage-training-cost-"))
    written = write_study(generate_study(3, StudyParams(positive=True)), work)
    pre = preprocess_series(written.axial.paths, PreprocessConfig())
    real = pre.volume[pre.mask]
    x = np.stack([real[i % len(real)] for i in range(args.batch)]).astype(np.float32)
    y = (np.arange(args.batch) % 2).astype(np.float32)

    cnn, _ = build_networks(NetworkConfig(), weights=None, seed=0)
    cnn.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    cnn.train_on_batch(x, y)  # trace and build the optimiser state
    started = time.perf_counter()
    for _ in range(args.steps):
        cnn.train_on_batch(x, y)
    train_per_slice = (time.perf_counter() - started) / (args.steps * args.batch)

    encoder = slice_encoder(cnn)
    encoder.predict(x[:16], verbose=0)
    started = time.perf_counter()
    encoder.predict(x, batch_size=16, verbose=0)
    encode_per_slice = (time.perf_counter() - started) / args.batch

    devices = [d.device_type for d in tf.config.list_logical_devices()]
    slices = args.studies * args.slices
    train_slices = slices * (args.folds - 1) / args.folds
    # Positives are augmented until they match the negatives: the epoch nearly doubles.
    epoch_slices = train_slices * 2 * (1 - args.positive_slice_fraction)
    val_slices = slices / args.folds
    epoch = epoch_slices * train_per_slice + val_slices * encode_per_slice
    fold = args.cnn_epochs * epoch + slices * encode_per_slice
    print(
        f"device: {'GPU' if 'GPU' in devices else 'CPU'}; InceptionResNetV2 at 386x386x3, "
        f"batch {args.batch}, {args.steps} timed steps"
    )
    print(
        f"training step: {train_per_slice:.3f} s per slice; encoding: "
        f"{encode_per_slice:.3f} s per slice"
    )
    print(
        f"projected for {args.studies} studies x {args.slices} slices, {args.folds} folds, "
        f"positives augmented to balance: one CNN epoch {epoch / 3600:.1f} h, one fold "
        f"({args.cnn_epochs} epochs + encodings) {fold / 3600:.1f} h, all folds "
        f"{args.folds * fold / 3600:.1f} h (the sequence model adds minutes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
