"""The three stages of one fold: slice CNN, slice encodings, sequence model.

Augmented slices are made only from training-fold slices (:class:`SliceBatches` with
``augment=True``); validation batches are the cached slices as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from model.augment import augment, balancing_plan
from model.network import slice_encoder
from model.training.config import SequenceSection, SliceCNNSection
from model.training.data import CachedSeries, expand_channels


@dataclass(frozen=True)
class SliceSample:
    """One slice for the slice CNN: which series and slot, its label, and augmentation."""

    series: int
    slot: int
    label: bool
    augment_seed: int | None = None  # None: the slice as cached


def slice_samples(
    series: Sequence[CachedSeries], augment_positives: bool, seed: int
) -> list[SliceSample]:
    """Every real slice of ``series``; with ``augment_positives``, augmented copies of the
    positive slices until the classes balance."""
    samples = [
        SliceSample(i, int(slot), bool(s.slice_labels[slot]))
        for i, s in enumerate(series)
        for slot in np.flatnonzero(s.mask)
    ]
    if not augment_positives:
        return samples
    positives = [x for x in samples if x.label]
    n_negative = len(samples) - len(positives)
    for index, aug_seed in balancing_plan(len(positives), n_negative, seed):
        p = positives[index]
        samples.append(SliceSample(p.series, p.slot, True, aug_seed))
    return samples


class SliceBatches(keras.utils.PyDataset):
    """Batches of (slices, labels), reshuffled every epoch with a seeded order."""

    def __init__(
        self,
        series: Sequence[CachedSeries],
        samples: Sequence[SliceSample],
        batch_size: int,
        channels: int,
        shuffle: bool,
        seed: int,
    ) -> None:
        super().__init__()
        self.series = series
        self.samples = list(samples)
        self.batch_size = batch_size
        self.channels = channels
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.order = np.arange(len(self.samples))
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.samples) / self.batch_size)

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = np.random.default_rng(self.seed + self.epoch).permutation(
                len(self.samples)
            )
        self.epoch += 1

    def __getitem__(self, index: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images = []
        labels = []
        for i in chosen:
            sample = self.samples[int(i)]
            img = expand_channels(self.series[sample.series].volume()[sample.slot], self.channels)
            if sample.augment_seed is not None:
                img = augment(img, np.random.default_rng(sample.augment_seed))
            images.append(img)
            labels.append(float(sample.label))
        return np.stack(images), np.asarray(labels, dtype=np.float32)


def _backbone(cnn: Any) -> Any:
    # The backbone is the one nested model inside the slice CNN.
    return next(layer for layer in cnn.layers if isinstance(layer, keras.Model))


def _adam(learning_rate: float, decay: float) -> keras.optimizers.Optimizer:
    # Keras 2's Adam(decay=d): lr_t = lr / (1 + d * step), the authors' schedule.
    schedule = keras.optimizers.schedules.InverseTimeDecay(learning_rate, 1, decay)
    return keras.optimizers.Adam(schedule)


def train_slice_cnn(
    cnn: Any,
    train: SliceBatches,
    validation: SliceBatches,
    cfg: SliceCNNSection,
    work: Path,
    log_dir: Path,
) -> dict[str, Any]:
    """Fit the slice CNN; keep the weights with the lowest validation loss."""
    best = work / "slice_cnn.best.weights.h5"
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            best, monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.TensorBoard(log_dir=str(log_dir)),
    ]
    history: dict[str, list[float]] = {}
    epochs_done = 0
    if cfg.frozen_backbone_epochs:
        backbone = _backbone(cnn)
        backbone.trainable = False
        cnn.compile(_adam(cfg.learning_rate, cfg.lr_decay), "binary_crossentropy")
        h = cnn.fit(
            train,
            validation_data=validation,
            epochs=cfg.frozen_backbone_epochs,
            callbacks=callbacks,
            verbose=2,
        )
        history = {k: list(v) for k, v in h.history.items()}
        epochs_done = cfg.frozen_backbone_epochs
        backbone.trainable = True
        optimizer = _adam(cfg.finetune_learning_rate, cfg.finetune_lr_decay)
    else:
        optimizer = _adam(cfg.learning_rate, cfg.lr_decay)
    cnn.compile(optimizer, "binary_crossentropy")
    remaining = cfg.epochs - epochs_done
    if remaining > 0:
        h = cnn.fit(
            train,
            validation_data=validation,
            initial_epoch=epochs_done,
            epochs=cfg.epochs,
            callbacks=callbacks,
            verbose=2,
        )
        for k, v in h.history.items():
            history.setdefault(k, []).extend(v)
    cnn.load_weights(best)
    return {"history": history, "best_val_loss": float(min(history["val_loss"]))}


def encode_series(
    cnn: Any, series: Sequence[CachedSeries], channels: int, batch_size: int
) -> NDArray[np.float32]:
    """(n_series, num_slices, encoding_dim) encodings; zeros in padding slots."""
    encoder = slice_encoder(cnn)
    dim = int(encoder.output.shape[-1])
    out = np.zeros((len(series), len(series[0].mask), dim), np.float32)
    for i, s in enumerate(series):
        slots = np.flatnonzero(s.mask)
        if slots.size:
            x = expand_channels(np.asarray(s.volume()[slots]), channels)
            out[i, slots] = encoder.predict(x, batch_size=batch_size, verbose=0)
    return out


def sequence_arrays(
    encodings: NDArray[np.float32], series: Sequence[CachedSeries]
) -> tuple[dict[str, NDArray[Any]], dict[str, NDArray[np.float32]]]:
    """Inputs and targets of the sequence model for ``series``."""
    inputs = {"encodings": encodings, "mask": np.stack([s.mask for s in series])}
    targets = {
        "slice": np.stack([s.slice_labels for s in series]).astype(np.float32),
        "stack": np.array([[float(s.positive)] for s in series], np.float32),
    }
    return inputs, targets


def train_sequence(
    model: Any,
    train: tuple[dict[str, NDArray[Any]], dict[str, NDArray[np.float32]]],
    validation: tuple[dict[str, NDArray[Any]], dict[str, NDArray[np.float32]]],
    cfg: SequenceSection,
    work: Path,
    log_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Fit the sequence model on both outputs; keep the lowest validation loss."""
    best = work / "sequence.best.weights.h5"
    model.compile(
        keras.optimizers.Nadam(cfg.learning_rate),
        loss={"slice": "binary_crossentropy", "stack": "binary_crossentropy"},
    )
    keras.utils.set_random_seed(seed)
    h = model.fit(
        train[0],
        train[1],
        validation_data=validation,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        shuffle=True,
        verbose=2,
        callbacks=[
            keras.callbacks.ModelCheckpoint(
                best, monitor="val_loss", save_best_only=True, save_weights_only=True
            ),
            keras.callbacks.TensorBoard(log_dir=str(log_dir)),
        ],
    )
    model.load_weights(best)
    history = {k: [float(x) for x in v] for k, v in h.history.items()}
    return {"history": history, "best_val_loss": float(min(history["val_loss"]))}
