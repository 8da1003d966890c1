"""Slices of phantoms generated for the slice CNN: new positives every epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.preprocess import PreprocessConfig
from model.preprocess.transform import preprocess_volume
from model.synthetic.phantom import StudyParams, generate_study
from model.training.data import CachedSeries, quantize
from model.training.fresh import build_fresh_pool, phantom_slices, phantom_volume
from model.training.stages import SliceBatches, slice_samples

SMALL = PreprocessConfig(input_size=32, channels=1, z_window="lungs", crop=True)


def test_a_phantom_gives_its_positive_slices_and_as_many_of_its_negatives() -> None:
    seed = 11
    positives, negatives = phantom_slices(seed, "realistic", SMALL)

    # The same phantom through the same preprocessing, labelled slot by slot.
    phantom = generate_study(seed, StudyParams(positive=True, difficulty="realistic"))
    pre = preprocess_volume(phantom_volume(phantom), SMALL)
    slots = quantize(pre.volume)
    label = [u is not None and bool(phantom.slice_labels[int(u)]) for u in pre.sop_instance_uids]
    positive_slots = [k for k in range(len(label)) if label[k]]
    negative_slots = [k for k in range(len(label)) if pre.mask[k] and not label[k]]

    assert len(positive_slots) >= 1
    assert len(positives) == len(negatives) == len(positive_slots)
    np.testing.assert_array_equal(positives, slots[positive_slots])
    # Each negative is one of the phantom's real negative slots, none twice, none padding.
    matches = [
        [k for k in negative_slots if np.array_equal(image, slots[k])] for image in negatives
    ]
    assert all(m for m in matches)
    assert len({m[0] for m in matches}) == len(negatives)


def test_the_pool_is_one_file_per_epoch_seeded_and_reused(tmp_path: Path) -> None:
    pool = build_fresh_pool(tmp_path / "a", SMALL, "realistic", 6, 2, seed=3)
    assert pool.size == 12
    assert [pool.label(k) for k in range(pool.size)] == [True] * 6 + [False] * 6
    first, second = pool.slices(0), pool.slices(1)
    assert first.shape == second.shape == (12, 32, 32, 1)
    # Each epoch has phantoms of its own.
    assert not np.array_equal(first, second)
    # Past the last epoch, the pool starts again.
    np.testing.assert_array_equal(pool.slices(2), first)

    # The same settings give the same slices; a finished epoch is not generated again.
    again = build_fresh_pool(tmp_path / "b", SMALL, "realistic", 6, 2, seed=3)
    np.testing.assert_array_equal(again.slices(1), second)
    stamp = pool.path(0).stat().st_mtime_ns
    reused = build_fresh_pool(tmp_path / "a", SMALL, "realistic", 6, 2, seed=3)
    assert reused.folder == pool.folder and pool.path(0).stat().st_mtime_ns == stamp
    # Another seed or difficulty is another pool.
    other = build_fresh_pool(tmp_path / "a", SMALL, "realistic", 6, 1, seed=4)
    assert other.folder != pool.folder
    assert not np.array_equal(other.slices(0), first)


def test_each_training_epoch_adds_its_own_fresh_slices_once(tmp_path: Path) -> None:
    fresh = build_fresh_pool(tmp_path, SMALL, "realistic", 4, 3, seed=5)
    cached = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 1), dtype=np.uint8)
    np.save(tmp_path / "series.npy", cached)
    labels = np.arange(10) < 3
    series = CachedSeries(
        "s", "t", "p", True, tmp_path / "series.npy", np.ones(10, bool), labels, ["x"] * 10
    )
    samples = slice_samples([series])
    batches = SliceBatches(
        [series], samples, 4, 1, True, 0, augment_probability=0.0, balanced=True, fresh=fresh
    )
    # 3 positives and 3 negatives of the series, then 4 and 4 of the pool.
    assert batches.epoch_size() == 6 + 8
    for epoch in range(3):
        order = [int(i) for i in batches.order]
        assert len(order) == len(set(order)) == 14
        assert sorted(i - len(samples) for i in order if i >= len(samples)) == list(range(8))
        assert batches.fresh_epoch == epoch
        # Every batch shows the series' slots and this epoch's pool file, with their labels.
        pool_images = np.asarray(fresh.slices(epoch), np.float32) / 255.0
        for b in range(len(batches)):
            x, y = batches[b]
            for row, i in enumerate(order[b * 4 : (b + 1) * 4]):
                if i < len(samples):
                    want, label = cached[samples[i].slot] / 255.0, samples[i].label
                else:
                    want, label = pool_images[i - 10], fresh.label(i - 10)
                np.testing.assert_allclose(x[row], want, atol=1e-7)
                assert y[row] == float(label)
        batches.on_epoch_end()
    # Validation never takes fresh slices.
    val = SliceBatches([series], samples, 4, 1, shuffle=False, seed=0)
    assert val.epoch_size() == len(samples) and max(int(i) for i in val.order) < len(samples)
