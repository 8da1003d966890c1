"""One code path from a CT series to model input, shared by training and the daemon.

- :func:`read_series` reads the DICOM files of one series into a :class:`CTVolume`
  (HU, cranial slice first, sorted by position along the slice normal) or raises
  :class:`SeriesRejectedError` saying what is wrong.
- :func:`preprocess_volume` resamples to the target spacing, segments the chest cavity,
  windows, resizes and pads to a :class:`PreprocessedSeries`.
- :func:`preprocess_series` does both and records the timings
  (:func:`preprocess_or_reason` in a worker process).
- :class:`PreprocessConfig` holds every parameter; the weight bundle records it.
"""

from model.preprocess.config import PreprocessConfig
from model.preprocess.reading import CTVolume, SeriesRejectedError, read_series
from model.preprocess.segment import chest_mask_lowres, segment_chest
from model.preprocess.transform import (
    FieldOfView,
    PreprocessedSeries,
    preprocess_or_reason,
    preprocess_series,
    preprocess_volume,
)

__all__ = [
    "CTVolume",
    "FieldOfView",
    "PreprocessConfig",
    "PreprocessedSeries",
    "SeriesRejectedError",
    "chest_mask_lowres",
    "preprocess_or_reason",
    "preprocess_series",
    "preprocess_volume",
    "read_series",
    "segment_chest",
]
