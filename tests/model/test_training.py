"""Training from weak labels, end to end on a handful of tiny synthetic studies."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from model.cli import main
from model.folds import assign_folds
from model.training.config import TrainingConfig, load_training_config
from model.training.data import CachedSeries, build_cache
from model.training.run import network_config, preprocess_config
from model.training.stages import (
    UNIFORM_SHARE,
    HardNegativeMiner,
    SliceBatches,
    SliceSample,
    balanced_subset,
    negative_draw_weights,
    recompute_batch_norm,
    slice_samples,
)

ROOT = Path(__file__).parents[2]

TINY = {
    "name": "tiny",
    "folds": 2,
    "seed": 1,
    "network": {"backbone": "small", "input_size": 32, "channels": 1, "weights": None},
    "slice_cnn": {"batch_size": 32, "epochs": 1},
    "sequence": {"batch_size": 4, "epochs": 2},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.synthetic import write_dataset

    folder = tmp_path_factory.mktemp("synthetic")
    write_dataset(
        folder,
        10,
        positive_fraction=0.5,
        seed=5,
        matrix=64,
        difficulty="easy",
        second_study_fraction=0.3,
    )
    return folder


def test_example_training_config_is_the_defaults() -> None:
    assert load_training_config(ROOT / "training.example.yaml") == TrainingConfig()


def test_bad_training_config_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("slice_cnn:\n  epochz: 3\nnetwork:\n  backbone: vgg\n")
    with pytest.raises(ValueError, match=r"slice_cnn\.epochz: unknown key") as info:
        load_training_config(path)
    assert "network.backbone" in str(info.value)


def test_hard_negatives_are_the_ones_the_cnn_scores_highest_and_join_the_draw(
    tmp_path: Path,
) -> None:
    # 40 slots: 5 positives, then negatives each brighter than the last.
    slots = np.repeat((np.arange(40) * 6).astype(np.uint8), 32 * 32).reshape(40, 32, 32, 1)
    np.save(tmp_path / "series.npy", slots)
    labels = np.arange(40) < 5
    series = CachedSeries(
        "s", "t", "p", True, tmp_path / "series.npy", np.ones(40, bool), labels, ["x"] * 40
    )
    batches = SliceBatches([series], slice_samples([series]), 4, 1, True, 0, balanced=True)
    # A "CNN" whose score rises with brightness: the brightest negatives are the hardest.
    image = keras.Input((32, 32, 1))
    score = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones")(
        keras.layers.GlobalAveragePooling2D()(image)
    )
    miner = HardNegativeMiner(batches, share=0.6, pool=100, every=2, seed=0)
    miner.set_model(keras.Model(image, score))
    before = [int(i) for i in batches.order]
    miner.on_epoch_end(0)  # not a mining epoch
    assert len(batches.hard) == 0 and [int(i) for i in batches.order] == before
    miner.on_epoch_end(1)
    assert sorted(int(i) for i in batches.hard) == [37, 38, 39]  # 0.6 of 5 negatives
    for _ in range(2):
        chosen = [int(i) for i in batches.order]
        # Every positive, the three hard negatives and two random ones, none twice.
        assert len(chosen) == len(set(chosen)) == 10
        assert set(range(5)) <= set(chosen) and {37, 38, 39} <= set(chosen)
        batches.on_epoch_end()
    config = TrainingConfig.model_validate({"slice_cnn": {"hard_negatives": 0.5}})
    assert config.slice_cnn.hard_negatives == 0.5
    with pytest.raises(ValueError):
        TrainingConfig.model_validate({"slice_cnn": {"hard_negatives": 1.0}})


def test_matched_negatives_are_drawn_at_the_positives_levels() -> None:
    # 40 series of 96 slots; positives only at slots 40-49 (the hila), as emboli lie.
    samples = [
        SliceSample(series, slot, series % 2 == 0 and 40 <= slot < 50 and slot % 3 == 0)
        for series in range(40)
        for slot in range(96)
    ]
    labels = np.array([s.label for s in samples])
    negatives = np.flatnonzero(~labels)
    assert negative_draw_weights(samples, negatives, matched=False) is None
    weights = negative_draw_weights(samples, negatives, matched=True)
    assert weights is not None
    assert weights.sum() == pytest.approx(1.0)
    slots = np.array([samples[i].slot for i in negatives])
    near = (slots >= 38) & (slots < 52)  # the positives' levels, widened by the smoothing
    # Three quarters go to the positives' levels plus their uniform share; an apex slice
    # can still be drawn, so the CNN still learns that apices are negative.
    assert weights[near].sum() == pytest.approx(1 - UNIFORM_SHARE + UNIFORM_SHARE * near.mean())
    assert weights[slots == 0].min() > 0

    def drawn_near(batches: SliceBatches) -> float:
        chosen = [int(i) for i in batches.order if not samples[int(i)].label]
        return float(np.mean([38 <= samples[i].slot < 52 for i in chosen]))

    uniform = SliceBatches([], samples, 8, 1, True, 0, balanced=True)
    matched = SliceBatches([], samples, 8, 1, True, 0, balanced=True, matched_negatives=True)
    assert drawn_near(uniform) < 0.3 < 0.7 < drawn_near(matched)
    # Validation draws the same way, and stays balanced and fixed.
    subset = balanced_subset(samples, seed=3, matched=True)
    assert subset == balanced_subset(samples, seed=3, matched=True)
    held = [s for s in subset if not s.label]
    assert len(held) == labels.sum()
    assert np.mean([38 <= s.slot < 52 for s in held]) > 0.7


def test_balanced_epochs_and_no_augmentation_in_validation(data: Path, tmp_path: Path) -> None:
    cfg = TrainingConfig.model_validate(TINY)
    series, _ = build_cache(data, data / "train.csv", tmp_path / "cache", preprocess_config(cfg))
    keys = [s.series_instance_uid for s in series]
    folds = assign_folds(keys, [s.positive for s in series], [s.patient for s in series], 2, 1)
    train = [s for s in series if folds[s.series_instance_uid] == 0]
    val = [s for s in series if folds[s.series_instance_uid] == 1]

    train_samples = slice_samples(train)
    # Padding slots are never samples.
    assert len(train_samples) == sum(int(s.mask.sum()) for s in train)
    assert all(train[x.series].mask[x.slot] for x in train_samples)
    positives = {i for i, x in enumerate(train_samples) if x.label}
    negatives = set(range(len(train_samples))) - positives
    assert positives and len(negatives) > len(positives)

    training = SliceBatches(
        train, train_samples, 8, 1, True, 0, augment_probability=0.5, balanced=True
    )
    epochs = []
    for _ in range(3):
        chosen = [int(i) for i in training.order]
        # Every positive once, and as many negatives, each at most once.
        assert len(chosen) == len(set(chosen)) == 2 * len(positives) == training.epoch_size()
        assert positives <= set(chosen)
        assert len(set(chosen) & negatives) == len(positives)
        assert len(training) == -(-len(chosen) // 8)
        epochs.append(set(chosen) & negatives)
        training.on_epoch_end()
    # A fresh draw of negatives every epoch, and the same draws for the same seed.
    assert epochs[0] != epochs[1]
    again = SliceBatches(train, train_samples, 8, 1, True, 0, balanced=True)
    assert set(int(i) for i in again.order) & negatives == epochs[0]
    # A batch holds the epoch's samples and their labels.
    x, y = training[0]
    first = [train_samples[int(i)] for i in training.order[:8]]
    np.testing.assert_array_equal(y, [float(s.label) for s in first])

    # Training augments both classes alike, so augmentation is no label cue.
    everything = SliceBatches(train, train_samples, 8, 1, True, 0, augment_probability=0.5)
    picked = [everything.augmentation_rng(i) is not None for i in range(len(train_samples))]
    rates = [
        np.mean([c for c, s in zip(picked, train_samples, strict=True) if s.label == label])
        for label in (False, True)
    ]
    assert abs(rates[0] - 0.5) < 0.15 and abs(rates[1] - 0.5) < 0.15, rates
    # A new epoch augments other samples.
    everything.on_epoch_end()
    assert [everything.augmentation_rng(i) is not None for i in range(len(picked))] != picked

    # Validation: a fixed balanced subset of the validation fold, never augmented, exactly
    # the cached slices.
    val_samples = balanced_subset(slice_samples(val), seed=3)
    assert balanced_subset(slice_samples(val), seed=3) == val_samples
    assert sum(s.label for s in val_samples) == sum(not s.label for s in val_samples)
    assert {val[s.series].series_instance_uid for s in val_samples} <= {
        v.series_instance_uid for v in val
    }
    batches = SliceBatches(val, val_samples, 8, 1, shuffle=False, seed=0)
    assert all(batches.augmentation_rng(i) is None for i in range(len(val_samples)))
    x, _ = batches[0]
    first_val = val_samples[0]
    cached = np.asarray(val[first_val.series].volume()[first_val.slot], np.float32) / 255.0
    np.testing.assert_allclose(x[0], cached, atol=1e-7)


def _weights(bundle: Path) -> dict[str, np.ndarray]:
    """Every weight array of every fold file (HDF5 bytes carry metadata that changes)."""
    import h5py

    arrays: dict[str, np.ndarray] = {}
    for path in sorted(bundle.glob("fold*_*.weights.h5")):
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, obj, p=path: (
                    arrays.__setitem__(f"{p.name}/{name}", obj[()])
                    if isinstance(obj, h5py.Dataset)
                    else None
                )
            )
    return arrays


@pytest.mark.timeout(900)  # trains the folds twice: in one process, then one per process
def _evaluate_args(bundle: Path, data: Path, report_dir: Path) -> list[str]:
    return [
        "evaluate",
        "--bundle",
        str(bundle),
        "--data",
        str(data),
        "--labels",
        str(data / "train.csv"),
        "--out",
        str(report_dir),
    ]


def test_train_then_evaluate(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "training.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "bundle"
    argv = [
        "train",
        "--config",
        str(config),
        "--data",
        str(data),
        "--labels",
        str(data / "train.csv"),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "out-of-fold stack ROC AUC" in printed

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trained"] is True
    assert manifest["network"]["backbone"] == "small"
    assert [f["fold"] for f in manifest["folds"]] == [0, 1]
    for level in ("stack", "slice"):
        t = manifest["thresholds"][level]
        assert t["provenance"] == "Youden on calibrated out-of-fold predictions of all 2 folds"
        assert 0.0 <= t["value"] <= 1.0
    oof = manifest["metrics"]["out_of_fold"]["stack"]
    assert oof["n"] + len(manifest["training"]["data"]["excluded"]) == 10
    folds = json.loads((out / "folds.json").read_text())
    patient_folds: dict[str, set[int]] = {}
    for entry in folds.values():
        patient_folds.setdefault(entry["patient"], set()).add(entry["fold"])
    assert all(len(f) == 1 for f in patient_folds.values())
    assert any(p.name.startswith("events") for p in (out / "tensorboard").rglob("*"))

    # Resumable: a rerun reuses the finished folds and writes the same weights.
    weights = _weights(out)
    assert main(argv) == 0
    assert "fold 0: finished earlier" in capsys.readouterr().err
    again = _weights(out)
    assert again.keys() == weights.keys()
    assert all(np.array_equal(again[k], weights[k]) for k in weights)

    # Folds one process each (as on a host with several GPUs) give the same bundle.
    split = [*argv[:-1], str(tmp_path / "split")]
    assert main([*split, "--cache-only"]) == 0
    assert not list((tmp_path / "split").glob("fold*_*.weights.h5"))
    for fold in ("1", "0"):
        assert main([*split, "--fold", fold]) == 0
    assert "run without --fold" in capsys.readouterr().out
    assert main(split) == 0
    apart = _weights(tmp_path / "split")
    assert all(np.array_equal(apart[k], weights[k]) for k in weights)
    assert main([*split, "--fold", "2"]) == 2

    report_dir = tmp_path / "report"
    assert main(_evaluate_args(out, data, report_dir)) == 0
    report = json.loads((report_dir / "report.json").read_text())
    stack = report["levels"]["stack"]
    assert stack["n"] == oof["n"]
    assert stack["threshold"]["value"] == manifest["thresholds"]["stack"]["value"]
    for name in (
        "stack_roc.png",
        "slice_pr.png",
        "stack_confusion.png",
        "predictions.csv",
        "report.md",
    ):
        assert (report_dir / name).is_file()
    md = (report_dir / "report.md").read_text()
    assert f"ROC AUC {stack['roc_auc']['estimate']:.3f}" in md

    # Series preprocessed in worker processes (every CPU, the default above) score as
    # one process scores them.
    serial_dir = tmp_path / "report_serial"
    serial = [*_evaluate_args(out, data, serial_dir), "--workers", "1"]
    assert main(serial) == 0
    predictions = (report_dir / "predictions.csv").read_text()
    assert (serial_dir / "predictions.csv").read_text() == predictions
    assert predictions.count("\n") == stack["n"] + 1

    # A change to the stack head alone retrains the sequence model on the saved slice CNN
    # and encodings; a change to the CNN's section retrains it.
    for work in (out / "work").glob("fold*"):
        (work / "done.json").unlink()
    config.write_text(
        yaml.safe_dump({**TINY, "network": {**TINY["network"], "stack_head": "top_slices"}})
    )
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("slice CNN: finished earlier") == 2
    head = _weights(out)
    assert all(np.array_equal(head[k], weights[k]) for k in weights if "slice_cnn" in k)
    assert json.loads((out / "manifest.json").read_text())["network"]["stack_head"] == "top_slices"
    for work in (out / "work").glob("fold*"):
        (work / "done.json").unlink()
    config.write_text(
        yaml.safe_dump({**TINY, "slice_cnn": {**TINY["slice_cnn"], "lr_decay": 0.002}})
    )
    assert main(argv) == 0
    assert "slice CNN: finished earlier" not in capsys.readouterr().err


def test_a_separate_validation_set_replaces_the_folds(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One model trains on every training series; the separate set picks its epochs and
    gives the calibrator and thresholds, and a set that shares series is refused."""
    from model.synthetic import write_dataset

    val = tmp_path / "validation"
    write_dataset(val, 6, positive_fraction=0.5, seed=6, matrix=64, difficulty="easy")
    config = tmp_path / "training.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "bundle"
    argv = ["train", "--config", str(config), "--data", str(data)]
    argv += ["--labels", str(data / "train.csv"), "--out", str(out)]
    assert main([*argv, "--validation-data", str(val)]) == 0
    assert "validation stack ROC AUC" in capsys.readouterr().out

    manifest = json.loads((out / "manifest.json").read_text())
    val_uids = {r["SeriesInstanceUID"] for r in csv.DictReader((val / "train.csv").open())}
    for level in ("stack", "slice"):
        provenance = manifest["thresholds"][level]["provenance"]
        expected = f"predictions on the separate validation set ({len(val_uids)} series)"
        assert provenance == f"Youden on calibrated {expected}"
    assert manifest["metrics"]["validation"]["stack"]["n"] == len(val_uids)
    assert "out_of_fold" not in manifest["metrics"]
    assert manifest["training"]["folds_file"] is None
    assert not (out / "folds.json").exists()
    report = json.loads((out / "training_report.json").read_text())
    assert set(report["validation_series"]) == val_uids
    done = json.loads((out / "work" / "validation" / "done.json").read_text())
    assert done["train_series"] == manifest["training"]["data"]["series"]
    assert done["validation_series"] == len(val_uids)
    # Resumable like a fold: a rerun reuses the finished model.
    assert main([*argv, "--validation-data", str(val)]) == 0
    assert "the model with a validation set: finished earlier" in capsys.readouterr().err

    # The training set as its own validation set would flatter every figure.
    leaky = [*argv[:-1], str(tmp_path / "leaky"), "--validation-data", str(data)]
    assert main(leaky) == 2
    assert "must be separate" in capsys.readouterr().err


def test_bfloat16_training_encodes_with_float32_weights(data: Path, tmp_path: Path) -> None:
    """The CNN trains in mixed bfloat16, but the sequence model learns from the encodings
    that the float32 predictor computes from the kept weights."""
    from model.network import build_networks, slice_encoder

    cfg = {**TINY, "train_folds": 1, "slice_cnn": {**TINY["slice_cnn"], "precision": "bfloat16"}}
    config = tmp_path / "training.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bundle"
    argv = ["train", "--config", str(config), "--data", str(data)]
    assert main([*argv, "--labels", str(data / "train.csv"), "--out", str(out)]) == 0
    training = TrainingConfig.model_validate(cfg)
    series, _ = build_cache(data, data / "train.csv", out / "cache", preprocess_config(training))
    folds = json.loads((out / "folds.json").read_text())
    val = [s for s in series if folds[s.series_instance_uid]["fold"] == 0]
    slots = np.flatnonzero(val[0].mask)
    images = np.asarray(val[0].volume()[slots], np.float32) / 255.0
    with np.load(out / "work" / "fold0" / "encodings.npz") as saved:
        encoded = saved["validation"][0, slots]
    expected = {}
    for precision in ("float32", "bfloat16"):
        cnn, _ = build_networks(network_config(training), weights=None, precision=precision)
        cnn.load_weights(out / "work" / "fold0" / "slice_cnn.best.weights.h5")
        expected[precision] = np.asarray(slice_encoder(cnn)(images))
    np.testing.assert_allclose(encoded, expected["float32"], atol=1e-5)
    assert np.abs(encoded - expected["bfloat16"]).max() > 1e-4  # the test can tell them apart


def test_training_adds_fresh_phantom_slices_to_every_epoch(data: Path, tmp_path: Path) -> None:
    cfg = {**TINY, "train_folds": 1, "slice_cnn": {**TINY["slice_cnn"], "fresh_positives": 5}}
    config = tmp_path / "training.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bundle"
    argv = ["train", "--config", str(config), "--data", str(data)]
    assert main([*argv, "--labels", str(data / "train.csv"), "--out", str(out)]) == 0
    (pool,) = (out / "cache").glob("fresh-*")
    assert [p.name for p in pool.glob("*.npy")] == ["epoch000.npy"]  # one per epoch
    assert np.load(pool / "epoch000.npy").shape == (10, 32, 32, 1)
    done = json.loads((out / "work" / "fold0" / "done.json").read_text())
    folds = json.loads((out / "folds.json").read_text())
    preprocess = preprocess_config(TrainingConfig.model_validate(cfg))
    series, _ = build_cache(data, data / "train.csv", out / "cache", preprocess)
    train = [s for s in series if folds[s.series_instance_uid]["fold"] != 0]
    positives = sum(int(s.slice_labels.sum()) for s in train)
    # The fold's own positives, as many negatives, and the pool's five and five.
    assert done["slice_cnn"]["steps_per_epoch"] == -(-(2 * positives + 10) // 32)


def test_precise_batch_norm_statistics_are_the_mean_over_the_batches() -> None:
    import keras

    from model.network import build_slice_cnn

    cnn = build_slice_cnn("small", 32, 1, None, seed=0)
    rng = np.random.default_rng(0)
    batches = [(rng.random((8, 32, 32, 1), dtype=np.float32), None) for _ in range(4)]
    assert recompute_batch_norm(cnn, batches, max_batches=3) == 3  # type: ignore[arg-type]
    backbone = cnn.get_layer("small")
    first = keras.Model(backbone.input, backbone.get_layer("conv0").output)
    features = np.asarray(first(np.concatenate([x for x, _ in batches[:3]]) * 2 - 1))
    norm = backbone.get_layer("bn0")
    np.testing.assert_allclose(
        np.asarray(norm.moving_mean), features.reshape(-1, features.shape[-1]).mean(0), atol=1e-5
    )
    assert norm.momentum == 0.99  # restored


class _Batches(keras.utils.PyDataset):  # type: ignore[misc]
    """Two fixed batches of random slices, the interface train_slice_cnn fits on."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(3)
        self.batches = [
            (rng.random((8, 32, 32, 1), dtype=np.float32) + 3.0 * i, np.eye(2)[[0, 1] * 4][:, :1])
            for i in range(2)
        ]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.batches[i]


@pytest.mark.parametrize("momentum", [0.99, 0.5])
def test_training_uses_the_configured_batch_norm_momentum(tmp_path: Path, momentum: float) -> None:
    """At a low momentum the moving statistics follow the last batches; at Keras' 0.99
    they stay near their initial values (the lag that made the kept epoch a lottery)."""
    from model.network import build_slice_cnn
    from model.training.config import SliceCNNSection
    from model.training.stages import train_slice_cnn

    cnn = build_slice_cnn("small", 32, 1, None, seed=0)
    cfg = SliceCNNSection(
        epochs=1, batch_size=8, batch_norm_momentum=momentum, batch_norm_batches=0
    )
    batches = _Batches()
    train_slice_cnn(cnn, batches, batches, cfg, tmp_path, tmp_path / "logs")
    norm = cnn.get_layer("small").get_layer("bn0")
    assert norm.momentum == momentum
    moved = float(np.abs(np.asarray(norm.moving_mean)).mean())
    # Inputs are scaled to [-1, 1] then shifted by 6 in the second batch, so the first
    # convolution's mean moves far from the initial 0 only when the momentum lets it.
    if momentum == 0.5:
        assert moved > 0.2
    else:
        assert moved < 0.1


@pytest.mark.parametrize("keep", ["val_loss", "val_auc"])
def test_the_kept_epoch_is_the_best_by_the_configured_measure(tmp_path: Path, keep: str) -> None:
    """The weights kept are those of the epoch with the lowest validation loss or the
    highest validation ROC AUC, as ``slice_cnn.keep`` says, and the result names it."""
    from sklearn.metrics import roc_auc_score

    from model.network import build_slice_cnn
    from model.training.config import SliceCNNSection
    from model.training.stages import train_slice_cnn

    cnn = build_slice_cnn("small", 32, 1, None, seed=0)
    cfg = SliceCNNSection(epochs=4, batch_size=8, batch_norm_batches=0, keep=keep)
    batches, flipped = _Batches(), _Batches()
    # Validation labels opposite to training's: the more the CNN learns, the worse it
    # validates, so the epoch kept is an early one, not the last.
    flipped.batches = [(x, 1.0 - y) for x, y in flipped.batches]
    result = train_slice_cnn(cnn, batches, flipped, cfg, tmp_path, tmp_path / "logs")
    history = result["history"]
    assert len(history["val_loss"]) == 4
    assert ("val_auc" in history) == (keep == "val_auc")
    kept = history[keep]
    best = max(kept) if keep == "val_auc" else min(kept)
    assert result["kept_epoch"] == kept.index(best) + 1 < 4
    # The network now holds that epoch's weights: its validation measure is the best one.
    x = np.concatenate([b[0] for b in flipped.batches])
    y = np.concatenate([b[1] for b in flipped.batches]).ravel()
    p = cnn.predict(x, verbose=0).ravel()
    if keep == "val_auc":
        assert roc_auc_score(y, p) == pytest.approx(best, abs=0.01)
    else:
        loss = float(keras.losses.binary_crossentropy(y[:, None], p[:, None]).numpy().mean())
        assert loss == pytest.approx(best, rel=1e-3)
