"""The three stages of one fold: slice CNN, slice encodings, sequence model.

Augmented slices are made only from training-fold slices (:class:`SliceBatches` with an
``augment_probability`` above zero); validation batches are the cached slices as they are.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from model.augment import augment
from model.compiled import inference_function, recompiles_per_shape, run_in_batches
from model.network import slice_encoder
from model.training.config import SequenceSection, SliceCNNSection
from model.training.data import CachedSeries, expand_channels
from model.training.fresh import FreshPool


@dataclass(frozen=True)
class SliceSample:
    """One real slice for the slice CNN: which series and slot, and its label."""

    series: int
    slot: int
    label: bool


def slice_samples(series: Sequence[CachedSeries]) -> list[SliceSample]:
    """Every real slice of ``series``; padding slots are never samples."""
    return [
        SliceSample(i, int(slot), bool(s.slice_labels[slot]))
        for i, s in enumerate(series)
        for slot in np.flatnonzero(s.mask)
    ]


# The share of each epoch's negatives drawn uniformly when they are position-matched, so
# that slices where emboli never lie (apices, bases) are still seen and kept low.
UNIFORM_SHARE = 0.25


def negative_draw_weights(
    samples: Sequence[SliceSample], negatives: NDArray[np.intp], matched: bool
) -> NDArray[np.float64] | None:
    """The chance of drawing each of ``negatives``: None for a uniform draw.

    ``matched``: the negatives' slot distribution is made that of the positives (each
    slot's share smoothed over five slots), mixed with :data:`UNIFORM_SHARE` of a uniform
    draw. With the 96 slots laid over the lungs a slot is an anatomical level, and emboli
    lie mostly at the hila: a uniform draw lets the CNN call the hilum positive and
    the apex negative, and a negative study's hilum then scores higher than most emboli.
    """
    if not matched or len(negatives) == 0:
        return None
    slots = np.array([s.slot for s in samples])
    labels = np.array([s.label for s in samples], dtype=bool)
    size = int(slots.max()) + 1
    box = np.ones(5) / 5
    pos = np.convolve(np.bincount(slots[labels], minlength=size), box, mode="same")
    neg = np.convolve(np.bincount(slots[~labels], minlength=size), box, mode="same")
    ratio = pos / np.maximum(neg, 1e-9)
    matched_weights = ratio[slots[negatives]]
    total = matched_weights.sum()
    uniform = np.full(len(negatives), 1.0 / len(negatives))
    if total <= 0:  # no positives: nothing to match
        return uniform
    return (1.0 - UNIFORM_SHARE) * matched_weights / total + UNIFORM_SHARE * uniform


def balanced_subset(
    samples: Sequence[SliceSample], seed: int, matched: bool = False
) -> list[SliceSample]:
    """Every positive sample and a seeded draw of as many negatives, in their order.

    The validation set of the slice CNN: scoring every slice of a validation fold after
    each epoch would cost more than the epoch itself, and a balanced set gives a loss on
    the same footing as training's. The draw is fixed, so epochs compare; ``matched``
    draws the negatives as training does (:func:`negative_draw_weights`).
    """
    labels = np.array([s.label for s in samples], dtype=bool)
    positives, negatives = np.flatnonzero(labels), np.flatnonzero(~labels)
    rng = np.random.default_rng([seed, 1])
    weights = negative_draw_weights(samples, negatives, matched)
    drawn = rng.choice(negatives, min(len(positives), len(negatives)), replace=False, p=weights)
    return [samples[int(i)] for i in np.sort(np.concatenate([positives, drawn]))]


class SliceBatches(keras.utils.PyDataset):
    """Batches of (slices, labels), reshuffled every epoch with a seeded order.

    ``balanced`` (training): each epoch takes every positive slice once plus a fresh
    seeded draw of as many negatives, so an epoch costs twice the positives rather than
    every slice of every series (about 100,000 for 600 studies) and the classes are
    balanced without copies. In training, every sample of either class is augmented with
    probability ``augment_probability``, drawn afresh each epoch from (seed, epoch,
    sample). The same probability for both classes matters: when only positive slices
    were augmented, the CNN learnt to recognise augmentation (noise, blur, rotated
    corners) instead of emboli. ``matched_negatives`` draws the negatives at the
    positives' levels (:func:`negative_draw_weights`). ``fresh`` (training) adds each
    epoch the pool's slices of that epoch, from phantoms generated for it (balanced,
    augmented alike). Validation uses none of these.
    """

    def __init__(
        self,
        series: Sequence[CachedSeries],
        samples: Sequence[SliceSample],
        batch_size: int,
        channels: int,
        shuffle: bool,
        seed: int,
        augment_probability: float = 0.0,
        balanced: bool = False,
        matched_negatives: bool = False,
        fresh: FreshPool | None = None,
    ) -> None:
        super().__init__()
        self.series = series
        self.samples = list(samples)
        self.batch_size = batch_size
        self.channels = channels
        self.shuffle = shuffle
        self.seed = seed
        self.augment_probability = augment_probability
        self.balanced = balanced
        self.fresh = fresh
        self.fresh_epoch = 0
        labels = np.array([s.label for s in self.samples], dtype=bool)
        self.positives = np.flatnonzero(labels)
        self.negatives = np.flatnonzero(~labels)
        self.negative_weights = negative_draw_weights(
            self.samples, self.negatives, balanced and matched_negatives
        )
        # Negatives that every draw takes before the random ones (HardNegativeMiner's).
        self.hard = np.empty(0, dtype=np.intp)
        self.epoch = 0
        self.order = np.arange(len(self.samples))
        self.on_epoch_end()

    def epoch_size(self) -> int:
        """Samples per epoch: all of them, or the positives and as many negatives."""
        if not self.balanced:
            return len(self.samples)
        extra = 0 if self.fresh is None else self.fresh.size
        return len(self.positives) + min(len(self.positives), len(self.negatives)) + extra

    def __len__(self) -> int:
        return math.ceil(self.epoch_size() / self.batch_size)

    def on_epoch_end(self) -> None:
        self._draw(self.epoch)
        self.epoch += 1

    def redraw(self) -> None:
        """Draw the coming epoch's order again (after :attr:`hard` changed)."""
        self._draw(self.epoch - 1)

    def _draw(self, epoch: int) -> None:
        if self.balanced:
            rng = np.random.default_rng([self.seed, epoch])
            wanted = min(len(self.positives), len(self.negatives))
            hard = self.hard[:wanted]
            rest, weights = self.negatives, self.negative_weights
            if len(hard):
                keep = ~np.isin(rest, hard)
                rest = rest[keep]
                if weights is not None:
                    weights = weights[keep] / weights[keep].sum()
            drawn = np.concatenate(
                [hard, rng.choice(rest, wanted - len(hard), replace=False, p=weights)]
            )
            # Fresh slices are numbered after the samples: len(samples) + their index.
            fresh = np.arange(0 if self.fresh is None else self.fresh.size)
            self.fresh_epoch = epoch
            self.order = rng.permutation(
                np.concatenate([self.positives, drawn, len(self.samples) + fresh])
            )
        elif self.shuffle:
            self.order = np.random.default_rng(self.seed + epoch).permutation(len(self.samples))

    def image(self, index: int) -> NDArray[np.float32]:
        """Sample ``index``'s model input, never augmented."""
        sample = self.samples[index]
        return expand_channels(self.series[sample.series].volume()[sample.slot], self.channels)

    def augmentation_rng(self, index: int) -> np.random.Generator | None:
        """The generator that augments sample ``index`` this epoch, or None to leave it."""
        if self.augment_probability <= 0:
            return None
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return rng if rng.random() < self.augment_probability else None

    def __getitem__(self, index: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images = []
        labels = []
        pool = None if self.fresh is None else self.fresh.slices(self.fresh_epoch)
        for i in chosen:
            if i < len(self.samples):
                img = self.image(int(i))
                label = self.samples[int(i)].label
            else:
                assert self.fresh is not None and pool is not None
                k = int(i) - len(self.samples)
                img = expand_channels(pool[k], self.channels)
                label = self.fresh.label(k)
            rng = self.augmentation_rng(int(i))
            if rng is not None:
                img = augment(img, rng)
            images.append(img)
            labels.append(float(label))
        return np.stack(images), np.asarray(labels, dtype=np.float32)


class HardNegativeMiner(keras.callbacks.Callback):
    """Every ``every`` epochs, put the negatives the CNN now scores highest into the draw.

    A negative study's stack probability comes from its highest slices, so what ranks a
    negative study above a small embolus is the one negative slice in a hundred that looks
    like clot (in the phantoms, a lit region of the filling-defect map among about seven
    per slice). A uniform draw of as many negatives as positives shows each negative slice
    about once in the whole training, and those few rarely. The miner scores ``pool``
    negatives drawn at random (seeded, un-augmented, inference mode) and makes the
    ``share`` of the next epochs' negatives the highest-scoring of them
    (:attr:`SliceBatches.hard`); the rest stay a random draw, so the CNN still sees the
    ordinary negatives.
    """

    def __init__(
        self, batches: SliceBatches, share: float, pool: int, every: int, seed: int
    ) -> None:
        super().__init__()
        self.batches = batches
        self.share = share
        self.pool = pool
        self.every = every
        self.seed = seed

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if (epoch + 1) % self.every:
            return
        negatives = self.batches.negatives
        rng = np.random.default_rng([self.seed, epoch, 3])
        pool = rng.choice(negatives, min(self.pool, len(negatives)), replace=False)
        scores = np.concatenate(
            [
                np.asarray(
                    self.model(
                        np.stack([self.batches.image(int(i)) for i in chunk]), training=False
                    )
                ).reshape(-1)
                for chunk in np.array_split(pool, max(1, math.ceil(len(pool) / 64)))
            ]
        )
        wanted = round(self.share * min(len(self.batches.positives), len(negatives)))
        hardest = np.argsort(-scores, kind="stable")[:wanted]
        self.batches.hard = pool[hardest]
        self.batches.redraw()
        floor = float(scores[hardest[-1]]) if wanted else float("nan")
        print(
            f"hard negatives: the {wanted} of {len(pool)} scored at or above {floor:.3f}",
            file=sys.stderr,
        )


def _tensorboard(log_dir: Path) -> list[Any]:
    """The TensorBoard callback, where TensorFlow (which writes its event files) is installed."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        print(f"TensorFlow is not installed: no TensorBoard logs in {log_dir}", file=sys.stderr)
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(log_dir))]


def _backbone(cnn: Any) -> Any:
    # The backbone is the one nested model inside the slice CNN.
    return next(layer for layer in cnn.layers if isinstance(layer, keras.Model))


def _adam(learning_rate: float, decay: float) -> keras.optimizers.Optimizer:
    # Keras 2's Adam(decay=d): lr_t = lr / (1 + d * step), the authors' schedule.
    schedule = keras.optimizers.schedules.InverseTimeDecay(learning_rate, 1, decay)
    return keras.optimizers.Adam(schedule)


def _batch_norms(model: Any) -> list[Any]:
    """Every BatchNormalization layer of ``model``, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(_batch_norms(layer))
    return found


def recompute_batch_norm(cnn: Any, batches: SliceBatches, max_batches: int) -> int:
    """Re-estimate every batch norm's population statistics with the final weights.

    The moving averages kept during training lag the weights: after a few epochs at Adam's
    1e-3 they describe a network hundreds of steps old, and the small CNN's inference-mode
    probabilities collapsed (0.16 on positive training slices, against 0.99 with batch
    statistics). Running un-augmented training batches through the network in training
    mode with a momentum of i/(i+1) makes each moving statistic the plain mean over those
    batches ("precise BN", Wu and Johnson 2021). Returns the number of batches used.
    """
    norms = _batch_norms(cnn)
    if not norms or max_batches <= 0:
        return 0
    saved = [layer.momentum for layer in norms]
    used = min(max_batches, len(batches))
    try:
        for i in range(used):
            for layer in norms:
                layer.momentum = i / (i + 1)
            cnn(batches[i][0], training=True)
    finally:
        for layer, momentum in zip(norms, saved, strict=True):
            layer.momentum = momentum
    return used


def train_slice_cnn(
    cnn: Any,
    train: SliceBatches,
    validation: SliceBatches,
    cfg: SliceCNNSection,
    work: Path,
    log_dir: Path,
    statistics: SliceBatches | None = None,
) -> dict[str, Any]:
    """Fit the slice CNN; keep the weights of the epoch that ``cfg.keep`` names (lowest
    validation loss or highest validation ROC AUC).

    With ``statistics`` (un-augmented training slices), the kept weights' batch-norm
    statistics are then re-estimated on them (:func:`recompute_batch_norm`).
    """
    best = work / "slice_cnn.best.weights.h5"
    by_auc = cfg.keep == "val_auc"
    # Exact enough for choosing an epoch: 1,000 thresholds on a probability.
    metrics = [keras.metrics.AUC(num_thresholds=1000, name="auc")] if by_auc else []
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            best,
            monitor=cfg.keep,
            mode="max" if by_auc else "min",
            save_best_only=True,
            save_weights_only=True,
        ),
        *_tensorboard(log_dir),
    ]
    if cfg.hard_negatives > 0:
        callbacks.insert(
            0,
            HardNegativeMiner(
                train,
                cfg.hard_negatives,
                cfg.hard_negative_pool,
                cfg.hard_negative_every,
                train.seed,
            ),
        )
    for norm in _batch_norms(cnn):
        norm.momentum = cfg.batch_norm_momentum
    history: dict[str, list[float]] = {}
    epochs_done = 0
    if cfg.frozen_backbone_epochs:
        backbone = _backbone(cnn)
        backbone.trainable = False
        cnn.compile(_adam(cfg.learning_rate, cfg.lr_decay), "binary_crossentropy", metrics=metrics)
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
    cnn.compile(optimizer, "binary_crossentropy", metrics=metrics)
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
    kept = history[cfg.keep]
    result: dict[str, Any] = {
        "history": history,
        "best_val_loss": float(min(history["val_loss"])),
        # 1-based, as Keras prints it.
        "kept_epoch": 1 + int(np.argmax(kept) if by_auc else np.argmin(kept)),
        "steps_per_epoch": len(train),
    }
    if statistics is not None:
        result["batch_norm_batches"] = recompute_batch_norm(cnn, statistics, cfg.batch_norm_batches)
        cnn.save_weights(best)
    return result


def encode_series(
    cnn: Any, series: Sequence[CachedSeries], channels: int, batch_size: int
) -> NDArray[np.float32]:
    """(n_series, num_slices, encoding_dim) encodings; zeros in padding slots.

    The encoder runs as the predictor runs it (:func:`model.compiled.inference_function`,
    one trace for every batch length), not through ``keras.Model.predict``: predict's
    per-call setup cost more than the network, 1.14 s against 0.65 s per 96-slice series
    on the project's CPU, with the same encodings to the bit (measured on 40 cached series
    of the demo bundle). Training encodes every series once, 800 of them for the demo.
    """
    encoder = slice_encoder(cnn)
    dim = int(encoder.output.shape[-1])
    run = inference_function(encoder, input_shape=tuple(encoder.input.shape))
    # As in the predictor: under jax every new batch length would cost a compilation.
    pad = recompiles_per_shape(jit_compile=False)
    out = np.zeros((len(series), len(series[0].mask), dim), np.float32)
    for i, s in enumerate(series):
        slots = np.flatnonzero(s.mask)
        if slots.size:
            x = expand_channels(np.asarray(s.volume()[slots]), channels)
            out[i, slots] = run_in_batches(run, x, batch_size, pad=pad)
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
            *_tensorboard(log_dir),
        ],
    )
    model.load_weights(best)
    history = {k: [float(x) for x in v] for k, v in h.history.items()}
    return {"history": history, "best_val_loss": float(min(history["val_loss"]))}
