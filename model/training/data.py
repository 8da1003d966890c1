"""Labelled series on disk, preprocessed once into a cache that every epoch reads.

The cache holds one uint8 ``.npy`` per series, ``(num_slices, size, size, channels)`` with
the [0, 1] input in steps of 1/255 (a quarter of the bytes of float16, so 600 studies at
256 pixels and three windows stay in the page cache; the step is 2.7 HU of the PE window,
well under CT noise), memory-mapped when read, with the slice mask and per-slot labels
beside it. Channels that only repeat the first are stored once. Its folder name carries a
hash of the preprocessing config and of this format, so changing either never reuses stale
inputs. Series that cannot be read are listed with their reason, never
silently dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from model.labels import SeriesLabels, read_labels, read_patients
from model.parallel import process_map
from model.preprocess import PreprocessConfig, preprocess_or_reason


@dataclass(frozen=True)
class CachedSeries:
    """One preprocessed, labelled series in the cache."""

    series_instance_uid: str
    study_instance_uid: str
    patient: str
    positive: bool
    volume_path: Path
    mask: NDArray[np.bool_]  # (num_slices,)
    slice_labels: NDArray[np.bool_]  # (num_slices,), False at padding
    sop_instance_uids: list[str | None]

    def volume(self) -> NDArray[np.uint8]:
        """The (num_slices, size, size, stored channels) input in 1/255 steps, memory-mapped."""
        return np.load(self.volume_path, mmap_mode="r")


@dataclass
class Excluded:
    """A labelled series left out, and why."""

    series_instance_uid: str
    reason: str


CACHE_FORMAT = 2
"""Version of the cache's file layout (2: uint8 with a channel axis)."""


def config_hash(config: PreprocessConfig) -> str:
    """Short stable hash of a preprocessing config and the cache format, naming its folder."""
    text = json.dumps({**config.to_dict(), "cache_format": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def series_files(data_dir: Path, labels: SeriesLabels) -> list[Path]:
    """The DICOM files of a series in the RSNA layout ``DIR/<Study>/<Series>/*.dcm``."""
    folder = data_dir / labels.study_instance_uid / labels.series_instance_uid
    return sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []


def _patient_ids(data_dir: Path, patients_csv: Path | None) -> dict[str, str]:
    if patients_csv is not None:
        return read_patients(patients_csv)
    default = data_dir / "patients.csv"
    return read_patients(default) if default.is_file() else {}


def _patient_from_header(files: Sequence[Path]) -> str | None:
    from pydicom import dcmread

    try:
        return str(
            dcmread(files[0], stop_before_pixels=True, specific_tags=["PatientID"]).PatientID
        )
    except (OSError, AttributeError, ValueError):
        return None


def _preprocess_one(
    job: tuple[list[Path], PreprocessConfig, Path, Path, str | None, str],
) -> str | None:
    """Preprocess one series into the cache (in a worker process); the reason if rejected."""
    files, config, volume_path, meta_path, patient, study_uid = job
    pre = preprocess_or_reason((files, config))
    if isinstance(pre, str):
        return pre
    tmp = volume_path.with_suffix(".tmp.npy")
    np.save(tmp, quantize(stored_channels(pre.volume, config)))
    tmp.replace(volume_path)
    meta_path.write_text(
        json.dumps(
            {
                "study_instance_uid": pre.study_instance_uid,
                "mask": pre.mask.tolist(),
                "sop_instance_uids": pre.sop_instance_uids,
                "patient": patient or _patient_from_header(files) or study_uid,
            }
        )
    )
    return None


def build_cache(
    data_dir: Path,
    labels_csv: Path,
    cache_root: Path,
    config: PreprocessConfig,
    patients_csv: Path | None = None,
    workers: int = 1,
) -> tuple[list[CachedSeries], list[Excluded]]:
    """Preprocess every labelled series once (reusing earlier work) and return the cache.

    Patients come from ``patients_csv``, else ``DIR/patients.csv``, else each series'
    PatientID header, so that folds can group a patient's studies. ``workers`` processes
    preprocess series in parallel.
    """
    labels = read_labels(labels_csv)
    patients = _patient_ids(data_dir, patients_csv)
    folder = cache_root / config_hash(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocess.json").write_text(json.dumps(config.to_dict(), indent=1))
    cached: list[CachedSeries] = []
    excluded: list[Excluded] = []
    rejected: dict[str, str] = {}
    jobs = {}
    for uid, series in sorted(labels.items()):
        volume_path, meta_path = folder / f"{uid}.npy", folder / f"{uid}.json"
        if series.indeterminate or (volume_path.is_file() and meta_path.is_file()):
            continue
        files = series_files(data_dir, series)
        if files:
            patient = patients.get(series.study_instance_uid)
            jobs[uid] = (files, config, volume_path, meta_path, patient, series.study_instance_uid)
    results = process_map(_preprocess_one, jobs.values(), workers)
    for uid, reason in tqdm(
        zip(jobs, results, strict=True), total=len(jobs), desc="preprocess", unit="series"
    ):
        if reason is not None:
            rejected[uid] = reason
    for uid, series in sorted(labels.items()):
        if series.indeterminate:
            excluded.append(Excluded(uid, "indeterminate exam"))
            continue
        volume_path = folder / f"{uid}.npy"
        meta_path = folder / f"{uid}.json"
        if uid in rejected:
            excluded.append(Excluded(uid, rejected[uid]))
            continue
        if not (volume_path.is_file() and meta_path.is_file()):
            excluded.append(Excluded(uid, "no files under <data>/<study>/<series>/"))
            continue
        meta = json.loads(meta_path.read_text())
        sops: list[str | None] = meta["sop_instance_uids"]
        missing = [s for s in sops if s is not None and s not in series.image_labels]
        if missing:
            excluded.append(
                Excluded(uid, f"{len(missing)} slices have no pe_present_on_image label")
            )
            continue
        slice_labels = np.array([bool(s is not None and series.image_labels[s]) for s in sops])
        if series.positive and not slice_labels.any():
            # The labelled slices lie outside the num_slices the model sees.
            excluded.append(
                Excluded(
                    uid, "positive exam whose positive slices are not in the model's slice range"
                )
            )
            continue
        cached.append(
            CachedSeries(
                series_instance_uid=uid,
                study_instance_uid=meta["study_instance_uid"],
                patient=meta["patient"],
                positive=series.positive,
                volume_path=volume_path,
                mask=np.array(meta["mask"], dtype=bool),
                slice_labels=slice_labels,
                sop_instance_uids=sops,
            )
        )
    return cached, excluded


def stored_channels(volume: NDArray[np.float32], config: PreprocessConfig) -> NDArray[np.float32]:
    """The channels the cache keeps: one when every channel repeats the same window."""
    return volume[..., :1] if config.channel_windows == "repeat" else volume


def quantize(volume: NDArray[np.floating]) -> NDArray[np.uint8]:
    """[0, 1] model input to the cache's uint8 steps of 1/255."""
    return np.rint(np.asarray(volume, dtype=np.float32) * 255.0).astype(np.uint8)


def expand_channels(images: NDArray[np.uint8], channels: int) -> NDArray[np.float32]:
    """(..., H, W, stored channels) cached slices to (..., H, W, channels) float32 input."""
    x = np.asarray(images, dtype=np.float32) * np.float32(1.0 / 255.0)
    return np.repeat(x, channels, axis=-1) if x.shape[-1] != channels else x
