"""``triage-model train``: five-fold training from weak labels, ending in a weight bundle.

Per fold: the slice CNN on training-fold slices (each epoch every positive slice and a
fresh draw of as many negatives, both classes augmented alike), the encodings of every
slice, then the sequence model. A finished fold leaves ``work/fold<k>/done.json`` and is
not trained again when the command is rerun; a finished slice CNN stage is reused too
(see :func:`_slice_stage`). ``train_folds`` trains only the first folds
(a reduced schedule for CPU demos).
A calibrator per level is fitted on the out-of-fold predictions, and the thresholds come
from the Youden index on the calibrated out-of-fold probabilities.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from model.bundle import Bundle, write_bundle
from model.calibration import Calibrator, fit_calibrator
from model.folds import assign_folds, save_folds
from model.network import NetworkConfig, build_configured_slice_cnn, build_networks
from model.preprocess import PreprocessConfig
from model.report import LevelData, level_metrics
from model.stats import youden_threshold
from model.training.config import TrainingConfig
from model.training.data import CachedSeries, Excluded, build_cache
from model.training.fresh import FreshPool, build_fresh_pool
from model.training.stages import (
    SliceBatches,
    balanced_subset,
    encode_series,
    sequence_arrays,
    slice_samples,
    train_sequence,
    train_slice_cnn,
)


def preprocess_config(cfg: TrainingConfig) -> PreprocessConfig:
    """The bundle's preprocessing: the ``preprocess`` section plus the network's shapes."""
    return PreprocessConfig(
        num_slices=cfg.network.num_slices,
        input_size=cfg.network.input_size,
        channels=cfg.network.channels,
        **cfg.preprocess.model_dump(),
    )


def network_config(cfg: TrainingConfig) -> NetworkConfig:
    """The bundle's network description."""
    n = cfg.network
    return NetworkConfig(
        backbone=n.backbone,
        input_size=n.input_size,
        channels=n.channels,
        encoding_dim=n.encoding_dim,
        num_slices=n.num_slices,
        stack_head=n.stack_head,
        weights_init=n.weights,
        pooling=n.pooling,
    )


@contextlib.contextmanager
def _strategy_scope() -> Iterator[None]:
    # Several GPUs: data-parallel replicas; otherwise the backend's default (CPU or 1 GPU).
    # The model code is plain Keras, so a GPU host with JAX but no TensorFlow also trains
    # (KERAS_BACKEND=jax), on one device.
    if keras.config.backend() != "tensorflow":
        yield
        return
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        with tf.distribute.MirroredStrategy().scope():
            yield
    else:
        yield


@dataclass
class FoldOutcome:
    """What one fold (or the training set with a separate validation set) left behind."""

    fold: int | None  # None: every training series, validated on a separate set
    cnn_weights: Path
    sequence_weights: Path
    sequence_val_loss: float
    oof: list[dict[str, Any]]  # one entry per validation series


def _slice_stage_key(cfg: TrainingConfig) -> str:
    """Hash of everything the slice CNN and its encodings depend on.

    The stack head and the sequence section are left out: changing only them reuses the
    trained CNN and its encodings (the sequence stage takes minutes, the CNN hours).
    """
    network = cfg.network.model_dump()
    network.pop("stack_head")
    text = json.dumps(
        {
            "preprocess": cfg.preprocess.model_dump(),
            "network": network,
            "slice_cnn": cfg.slice_cnn.model_dump(),
            "seed": cfg.seed,
            "folds": cfg.folds,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _slice_stage(
    cfg: TrainingConfig,
    cnn: Any,
    train: list[CachedSeries],
    val: list[CachedSeries],
    work: Path,
    batches: tuple[SliceBatches, SliceBatches, SliceBatches],
    logs: Path,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Train the slice CNN and encode every slice, or reuse both from an earlier run.

    A finished stage leaves ``slice_cnn.json`` (with :func:`_slice_stage_key`) and
    ``encodings.npz`` beside the kept weights, so a run that died in the sequence stage,
    or one that changes only the sequence model, starts from there.
    """
    marker, encodings = work / "slice_cnn.json", work / "encodings.npz"
    key = _slice_stage_key(cfg)
    if marker.is_file() and encodings.is_file():
        done = json.loads(marker.read_text())
        if done.get("key") == key:
            print(f"slice CNN: finished earlier, reusing {work}", file=sys.stderr)
            cnn.load_weights(work / "slice_cnn.best.weights.h5")
            with np.load(encodings) as saved:
                return done["result"], saved["train"], saved["validation"]
    train_batches, val_batches, statistics = batches
    result = train_slice_cnn(
        cnn, train_batches, val_batches, cfg.slice_cnn, work, logs / "slice_cnn", statistics
    )
    channels, batch_size = cfg.network.channels, cfg.slice_cnn.batch_size
    encoder = cnn
    if cfg.slice_cnn.precision != cfg.precision:
        # Encode as the predictor will run the bundle: in the bundle's precision.
        encoder = build_configured_slice_cnn(network_config(cfg), precision=cfg.precision)
        encoder.load_weights(work / "slice_cnn.best.weights.h5")
    enc_train = encode_series(encoder, train, channels, batch_size)
    enc_val = encode_series(encoder, val, channels, batch_size)
    np.savez(encodings, train=enc_train, validation=enc_val)
    marker.write_text(json.dumps({"key": key, "result": result}))
    return result, enc_train, enc_val


def _train_fold(
    fold: int,
    cfg: TrainingConfig,
    series: list[CachedSeries],
    fold_of: dict[str, int],
    out: Path,
    fresh: FreshPool | None = None,
) -> FoldOutcome:
    """Train on every fold but ``fold`` and validate on ``fold``."""
    train = [s for s in series if fold_of[s.series_instance_uid] != fold]
    val = [s for s in series if fold_of[s.series_instance_uid] == fold]
    return _train_split(fold, train, val, cfg, out, fresh)


def _train_split(
    fold: int | None,
    train: list[CachedSeries],
    val: list[CachedSeries],
    cfg: TrainingConfig,
    out: Path,
    fresh: FreshPool | None,
) -> FoldOutcome:
    """Train the slice CNN and the sequence model on ``train``; ``val`` picks their kept
    epochs and gives the predictions that the calibrator and thresholds are fitted on.
    ``fold`` None is the model with a separate validation set. Work goes to
    ``out/work/fold<k>`` (or ``out/work/validation``); a finished split is reused."""
    name = "validation" if fold is None else f"fold{fold}"
    # The validation-set model's seed is none of the folds'.
    seed = cfg.seed * 1000 + (cfg.folds if fold is None else fold)
    work = out / "work" / name
    done = work / "done.json"
    if done.is_file():
        label = "the model with a validation set" if fold is None else f"fold {fold}"
        print(f"{label}: finished earlier, reusing {work}", file=sys.stderr)
        data = json.loads(done.read_text())
        return FoldOutcome(
            fold,
            work / "slice_cnn.best.weights.h5",
            work / "sequence.best.weights.h5",
            data["sequence_val_loss"],
            data["oof"],
        )
    work.mkdir(parents=True, exist_ok=True)
    channels = cfg.network.channels
    net = network_config(cfg)
    matched = cfg.slice_cnn.negatives == "matched"
    with _strategy_scope():
        cnn, sequence = build_networks(
            net, weights=cfg.network.weights, precision=cfg.slice_cnn.precision, seed=seed
        )
        train_batches = SliceBatches(
            train,
            slice_samples(train),
            cfg.slice_cnn.batch_size,
            channels,
            shuffle=True,
            seed=seed,
            augment_probability=cfg.slice_cnn.augment_probability if cfg.slice_cnn.augment else 0,
            balanced=True,
            matched_negatives=matched,
            fresh=fresh,
        )
        val_batches = SliceBatches(
            val,
            balanced_subset(slice_samples(val), seed, matched),
            cfg.slice_cnn.batch_size,
            channels,
            shuffle=False,
            seed=seed,
        )
        logs = out / "tensorboard" / name
        statistics = SliceBatches(
            train,
            slice_samples(train),
            cfg.slice_cnn.batch_size,
            channels,
            shuffle=True,
            seed=seed + 1,
        )
        cnn_result, enc_train, enc_val = _slice_stage(
            cfg, cnn, train, val, work, (train_batches, val_batches, statistics), logs
        )
        seq_result = train_sequence(
            sequence,
            sequence_arrays(enc_train, train),
            sequence_arrays(enc_val, val),
            cfg.sequence,
            work,
            logs / "sequence",
            seed,
        )
        inputs, _ = sequence_arrays(enc_val, val)
        out_val = sequence.predict(inputs, batch_size=cfg.sequence.batch_size, verbose=0)
    oof = []
    for i, s in enumerate(val):
        slots = np.flatnonzero(s.mask)
        oof.append(
            {
                "series_instance_uid": s.series_instance_uid,
                "label": s.positive,
                "stack": float(out_val["stack"][i][0]),
                "slice_labels": s.slice_labels[slots].astype(int).tolist(),
                "slice_scores": [float(x) for x in out_val["slice"][i][slots]],
            }
        )
    done.write_text(
        json.dumps(
            {
                "fold": fold,
                "train_series": len(train),
                "validation_series": len(val),
                "slice_cnn": cnn_result,
                "sequence": seq_result,
                "sequence_val_loss": seq_result["best_val_loss"],
                "oof": oof,
            }
        )
    )
    return FoldOutcome(
        fold,
        work / "slice_cnn.best.weights.h5",
        work / "sequence.best.weights.h5",
        seq_result["best_val_loss"],
        oof,
    )


@dataclass
class OutOfFold:
    """The out-of-fold predictions of the trained folds, raw and calibrated."""

    stack_labels: list[bool]
    stack_raw: list[float]
    slice_labels: list[bool]
    slice_raw: list[float]
    calibrators: dict[str, Calibrator]
    provenance: str

    def levels(self, calibrated: bool) -> list[LevelData]:
        """Stack and slice levels, thresholds by Youden on the same probabilities."""
        out = []
        for name, labels, raw in (
            ("stack", self.stack_labels, self.stack_raw),
            ("slice", self.slice_labels, self.slice_raw),
        ):
            scores = [float(x) for x in self.calibrators[name].apply(raw)] if calibrated else raw
            threshold = youden_threshold(labels, scores).threshold
            out.append(LevelData(name, labels, scores, threshold, self.provenance))
        return out


def _fold_source(outcomes: list[FoldOutcome], cfg: TrainingConfig) -> str:
    folds = [o.fold for o in outcomes]
    if len(folds) < cfg.folds:
        return f"out-of-fold predictions of folds {', '.join(map(str, folds))} of {cfg.folds}"
    return f"out-of-fold predictions of all {cfg.folds} folds"


def _out_of_fold(outcomes: list[FoldOutcome], cfg: TrainingConfig, source: str) -> OutOfFold:
    """Pool the validation predictions of ``outcomes`` and fit the calibrators on them."""
    stack_y = [bool(o["label"]) for f in outcomes for o in f.oof]
    stack_s = [float(o["stack"]) for f in outcomes for o in f.oof]
    slice_y = [bool(v) for f in outcomes for o in f.oof for v in o["slice_labels"]]
    slice_s = [float(v) for f in outcomes for o in f.oof for v in o["slice_scores"]]
    calibrators = {
        "stack": fit_calibrator(cfg.calibration, stack_y, stack_s, source),
        "slice": fit_calibrator(cfg.calibration, slice_y, slice_s, source),
    }
    provenance = "Youden on calibrated " + source
    if cfg.calibration == "none":
        provenance = "Youden on " + source
    return OutOfFold(stack_y, stack_s, slice_y, slice_s, calibrators, provenance)


def train(
    cfg: TrainingConfig,
    data_dir: Path,
    labels_csv: Path,
    out: Path,
    patients_csv: Path | None = None,
    workers: int = 1,
    only_fold: int | None = None,
    cache_only: bool = False,
    validation: tuple[Path, Path] | None = None,
) -> Bundle | None:
    """Train every fold (skipping finished ones) and write the bundle into ``out``.

    ``workers`` processes preprocess the series into the cache. With ``only_fold``, train
    that fold alone and return None: several processes (one per GPU or host sharing
    ``out``) can train folds side by side, and a last run without it writes the bundle.
    With ``cache_only``, preprocess the series into the cache and return None.

    ``validation`` (a data folder and its labels CSV) replaces the folds: one model trains
    on every training series, and the separate set picks its kept epochs and gives the
    predictions that the calibrator and thresholds are fitted on. A fold that picks its
    epoch on its own held-out series also reports on them, which flatters it; a separate
    set keeps the report's figures for a test set.

    Raises
    ------
    ValueError
        If the data cannot fill the folds, the validation set shares a series or patient
        with the training set, or a configuration value is unusable.
    """
    out.mkdir(parents=True, exist_ok=True)
    series, excluded = build_cache(
        data_dir, labels_csv, out / "cache", preprocess_config(cfg), patients_csv, workers
    )
    if not series:
        raise ValueError("no usable labelled series; see the excluded list in training_report.json")
    val_series: list[CachedSeries] = []
    if validation is not None:
        val_series, _ = build_cache(
            *validation, out / "cache", preprocess_config(cfg), None, workers
        )
        _check_separate(series, val_series)
    fresh = None
    if cfg.slice_cnn.fresh_positives:
        fresh = build_fresh_pool(
            out / "cache",
            preprocess_config(cfg),
            cfg.slice_cnn.fresh_difficulty,
            cfg.slice_cnn.fresh_positives,
            cfg.slice_cnn.epochs,
            cfg.seed,
            workers,
        )
    if cache_only:
        return None
    if validation is not None:
        if only_fold is not None:
            raise ValueError("--fold cannot be combined with a separate validation set")
        outcomes = [_train_split(None, series, val_series, cfg, out, fresh)]
        source = f"predictions on the separate validation set ({len(val_series)} series)"
        return _write(cfg, out, outcomes, _out_of_fold(outcomes, cfg, source), series, excluded)
    keys = [s.series_instance_uid for s in series]
    groups = {s.series_instance_uid: s.patient for s in series}
    fold_of = assign_folds(
        keys, [s.positive for s in series], [groups[k] for k in keys], cfg.folds, cfg.seed
    )
    save_folds(out / "folds.json", fold_of, groups)

    if only_fold is not None:
        if not 0 <= only_fold < cfg.folds:
            raise ValueError(f"--fold must be between 0 and {cfg.folds - 1}, not {only_fold}")
        _train_fold(only_fold, cfg, series, fold_of, out, fresh)
        return None
    trained = cfg.train_folds or cfg.folds
    if trained > cfg.folds:
        raise ValueError(f"train_folds ({trained}) cannot exceed folds ({cfg.folds})")
    outcomes = [_train_fold(k, cfg, series, fold_of, out, fresh) for k in range(trained)]
    oof = _out_of_fold(outcomes, cfg, _fold_source(outcomes, cfg))
    return _write(cfg, out, outcomes, oof, series, excluded, fold_of)


def _check_separate(train: list[CachedSeries], val: list[CachedSeries]) -> None:
    """A validation series or patient that is also in training would flatter the figures."""
    if not val:
        raise ValueError("the validation set has no usable labelled series")
    shared = {s.series_instance_uid for s in train} & {s.series_instance_uid for s in val}
    patients = {s.patient for s in train} & {s.patient for s in val}
    if shared or patients:
        raise ValueError(
            f"the validation set shares {len(shared)} series and {len(patients)} patients "
            "with the training set; it must be separate"
        )


def _write(
    cfg: TrainingConfig,
    out: Path,
    outcomes: list[FoldOutcome],
    oof: OutOfFold,
    series: list[CachedSeries],
    excluded: list[Excluded],
    fold_of: dict[str, int] | None = None,
) -> Bundle:
    """Write the training report and the bundle of the chosen models."""
    calibrated = oof.levels(calibrated=True)
    metrics = {lvl.name: _summary_metrics(level_metrics(lvl)) for lvl in calibrated}
    raw_metrics = {
        lvl.name: _summary_metrics(level_metrics(lvl)) for lvl in oof.levels(calibrated=False)
    }
    stack_t, slice_t = calibrated[0].threshold, calibrated[1].threshold
    chosen = outcomes
    if cfg.bundle_models == "best":
        chosen = [min(outcomes, key=lambda o: o.sequence_val_loss)]
    models = []
    net = network_config(cfg)
    for outcome in chosen:
        cnn, sequence = build_networks(net, weights=None)
        cnn.load_weights(outcome.cnn_weights)
        sequence.load_weights(outcome.sequence_weights)
        models.append((cnn, sequence))
    summary = _data_summary(series, excluded)
    # Named for what the figures are: out of fold, or on the separate validation set.
    kind = "out_of_fold" if fold_of is not None else "validation"
    report: dict[str, Any] = {"data": summary}
    if fold_of is not None:
        report["folds"] = {k: fold_of[k] for k in sorted(fold_of)}
        report["folds_trained"] = [o.fold for o in outcomes]
    else:
        report["validation_series"] = [o["series_instance_uid"] for o in outcomes[0].oof]
    report |= {
        kind: metrics,
        f"{kind}_raw": raw_metrics,
        "calibration": {k: c.to_dict() for k, c in oof.calibrators.items()},
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=1))
    provenance = oof.provenance
    return write_bundle(
        out,
        {
            "name": cfg.name,
            "version": cfg.version,
            "description": cfg.description,
            "trained": True,
            "precision": cfg.precision,
            "preprocess": preprocess_config(cfg).to_dict(),
            "network": net.to_dict(),
            "thresholds": {
                "stack": {"value": stack_t, "provenance": provenance},
                "slice": {"value": slice_t, "provenance": provenance},
            },
            "calibration": {k: c.to_dict() for k, c in oof.calibrators.items()},
            "training": {
                "config": cfg.model_dump(),
                "data": summary,
                "folds_file": "folds.json" if fold_of is not None else None,
                "bundle_models": cfg.bundle_models,
                "folds_in_bundle": [o.fold for o in chosen if o.fold is not None],
                "folds_trained": [o.fold for o in outcomes if o.fold is not None],
                "validation_series": len(outcomes[0].oof) if fold_of is None else None,
            },
            "metrics": {kind: metrics, f"{kind}_raw": raw_metrics},
        },
        models,
    )


def _summary_metrics(m: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "n",
        "n_positive",
        "roc_auc",
        "average_precision",
        "youden",
        "threshold",
        "confusion",
        "metrics",
        "brier",
    )
    return {k: m[k] for k in keep if k in m}


def _data_summary(series: list[CachedSeries], excluded: list[Excluded]) -> dict[str, Any]:
    return {
        "series": len(series),
        "positive_series": sum(s.positive for s in series),
        "patients": len({s.patient for s in series}),
        "slices": int(sum(s.mask.sum() for s in series)),
        "positive_slices": int(sum(s.slice_labels.sum() for s in series)),
        "excluded": [
            {"series_instance_uid": e.series_instance_uid, "reason": e.reason} for e in excluded
        ],
    }
