"""Slices of phantoms generated for the slice CNN: new positives every epoch.

Every epoch shows the CNN each positive slice of the training fold (about 1,300 for the
demo's 320 training studies), and the CNN learns those slices rather than emboli: its
training loss falls while its validation loss does not (docs/ablations.md). The
generator makes a 512-pixel positive phantom in about a second on one core, and its
image goes through :func:`~model.preprocess.transform.preprocess_volume` in memory, the
function the DICOM path ends in. So each epoch can add positives the CNN has never seen.

The labels stay weak: a slice is positive when the phantom's embolus touches it, which
is what ``pe_present_on_image`` says of a synthetic study. Each phantom gives its
positive slices and as many of its own negative slices, most of them near the positives'
levels: same patient, same anatomy, so the difference the CNN can learn is the embolus
(not the patient, nor the enlarged right ventricle that positive studies have more often).

Phantoms are generated once per run, before the CNN trains, one file per epoch, and are
reused by a resumed run and by every fold. Their seeds come from their own stream of the
training seed, not from :func:`~model.synthetic.dataset.study_seeds`, so they are not
the studies of any data set that ``triage-model synth`` writes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from model.parallel import process_map
from model.preprocess import PreprocessConfig
from model.preprocess.reading import CTVolume
from model.preprocess.transform import preprocess_volume
from model.synthetic.phantom import Phantom, StudyParams, generate_study
from model.training.data import quantize, stored_channels

_STREAM = 0x66726573  # "fres": this module's seed stream, apart from study_seeds'
_NEAR_SLOTS = 5  # a negative within this many slots of a positive counts as its level
_NEAR_SHARE = 0.75  # of the negatives drawn near the positives; the rest anywhere


@dataclass(frozen=True)
class FreshPool:
    """One file of fresh slices per epoch: ``per_epoch`` positives, then as many negatives."""

    folder: Path
    epochs: int
    per_epoch: int

    def path(self, epoch: int) -> Path:
        return self.folder / f"epoch{epoch:03d}.npy"

    def slices(self, epoch: int) -> NDArray[np.uint8]:
        """Epoch ``epoch``'s (2 * per_epoch, size, size, stored channels) slices, mapped.

        Epochs past the pool's last reuse it from the start.
        """
        return np.load(self.path(epoch % self.epochs), mmap_mode="r")

    @property
    def size(self) -> int:
        """Slices in each epoch's file."""
        return 2 * self.per_epoch

    def label(self, index: int) -> bool:
        """The label of slice ``index`` of an epoch's file: positives come first."""
        return index < self.per_epoch


def phantom_volume(phantom: Phantom) -> CTVolume:
    """The phantom as :func:`~model.preprocess.reading.read_series` would read its DICOM
    files (integer pixel values, slope 1); the SOP Instance UIDs are the slice indices."""
    return CTVolume(
        hu=np.rint(phantom.hu).astype(np.float32),
        positions_mm=np.asarray(phantom.geometry.slice_z, dtype=np.float64),
        pixel_spacing=(phantom.geometry.pixel_spacing,) * 2,
        sop_instance_uids=[str(k) for k in range(phantom.n_slices)],
        series_instance_uid=f"phantom-{phantom.seed}",
        study_instance_uid=f"phantom-{phantom.seed}",
    )


def phantom_slices(
    seed: int, difficulty: str, config: PreprocessConfig
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """A positive phantom's positive slices and as many of its negatives, as model input.

    Returns (positives, negatives), each ``(n, size, size, stored channels)`` in the
    cache's uint8 steps; padding slots are never drawn.
    """
    phantom = generate_study(seed, StudyParams(positive=True, difficulty=difficulty))
    pre = preprocess_volume(phantom_volume(phantom), config)
    stored = stored_channels(pre.volume, config)
    # Each slot is labelled by the source slice it shows, as build_cache labels by SOP.
    labels = np.array(
        [uid is not None and bool(phantom.slice_labels[int(uid)]) for uid in pre.sop_instance_uids]
    )
    positives = np.flatnonzero(labels)
    negatives = np.flatnonzero(pre.mask & ~labels)
    if len(positives) == 0 or len(negatives) == 0:  # its emboli lie outside the window
        return quantize(stored[:0]), quantize(stored[:0])
    distance = np.abs(negatives[:, None] - positives[None, :]).min(axis=1)
    near = distance <= _NEAR_SLOTS
    weights = np.full(len(negatives), (1.0 - _NEAR_SHARE) / len(negatives))
    if near.any():
        weights[near] += _NEAR_SHARE / near.sum()
    weights /= weights.sum()
    rng = np.random.default_rng([seed, _STREAM])
    count = min(len(positives), len(negatives))
    drawn = np.sort(rng.choice(negatives, count, replace=False, p=weights))
    return quantize(stored[positives[:count]]), quantize(stored[drawn])


def _epoch_seeds(seed: int, epoch: int) -> list[int]:
    # Enough for any epoch: most positive phantoms give several positive slices.
    state = np.random.SeedSequence([seed, _STREAM, epoch]).generate_state(4096, dtype=np.uint32)
    return [int(s) for s in state]


def _write_epoch(job: tuple[Path, int, int, int, str, PreprocessConfig]) -> None:
    """Generate phantoms until ``per_epoch`` positives; write them and their negatives."""
    path, seed, epoch, per_epoch, difficulty, config = job
    positives: list[NDArray[np.uint8]] = []
    negatives: list[NDArray[np.uint8]] = []
    found = 0
    used = 0
    for phantom_seed in _epoch_seeds(seed, epoch):
        try:
            pos, neg = phantom_slices(phantom_seed, difficulty, config)
        except RuntimeError:  # no embolus fitted its arteries: the generator says so
            continue
        positives.append(pos)
        negatives.append(neg)
        found += len(pos)
        used += 1
        if found >= per_epoch:
            break
    if found < per_epoch:
        raise ValueError(f"{per_epoch} fresh positives per epoch need more than {used} phantoms")
    pos_all = np.concatenate(positives)[:per_epoch]
    neg_all = np.concatenate(negatives)[:per_epoch]
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, np.concatenate([pos_all, neg_all]))
    tmp.replace(path)


def build_fresh_pool(
    cache_root: Path,
    config: PreprocessConfig,
    difficulty: str,
    per_epoch: int,
    epochs: int,
    seed: int,
    workers: int = 1,
) -> FreshPool:
    """Generate (or reuse) ``epochs`` files of ``per_epoch`` fresh positives and negatives.

    The folder's name hashes everything the slices depend on, so a changed setting gets
    new phantoms and an unchanged one reuses every finished epoch file.
    """
    key = json.dumps(
        {
            "preprocess": config.to_dict(),
            "difficulty": difficulty,
            "seed": seed,
            "per_epoch": per_epoch,
        },
        sort_keys=True,
    )
    folder = cache_root / f"fresh-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    pool = FreshPool(folder, epochs, per_epoch)
    jobs = [
        (pool.path(e), seed, e, per_epoch, difficulty, config)
        for e in range(epochs)
        if not pool.path(e).is_file()
    ]
    for _ in tqdm(
        process_map(_write_epoch, jobs, workers),
        total=len(jobs),
        desc="fresh phantoms",
        unit="epoch",
    ):
        pass
    return pool
