"""The typed preprocessing configuration that a weight bundle records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class PreprocessConfig:
    """Every parameter that turns a CT series into model input.

    The weight bundle stores :meth:`to_dict` and inference rebuilds the config with
    :meth:`from_dict`, so training and inference cannot disagree.

    Parameters
    ----------
    num_slices : int
        Slices in the model input, taken from the top (cranial end); fewer are zero-padded.
    slice_spacing_mm : float
        Target spacing along the slice normal.
    input_size : int
        Rows and columns of each output slice.
    channels : int
        1, or 3 for backbones with RGB input (the grey image repeated).
    window_center, window_width : float
        Intensity window in HU, mapped to ``[0, 1]``.
    segment : bool
        Zero everything outside the chest cavity (lungs, heart and mediastinum).
    crop : bool
        With ``segment``, crop each series to the square around its chest cavity before
        resizing, so that the input's pixels show the chest rather than air and body wall
        (about 1.5 times the detail at the same input size).
    min_slices : int
        Series with fewer source slices are rejected.
    spacing_tolerance : float
        Relative difference between measured and target spacing below which the slices
        are used as they are, without resampling.
    lung_threshold_hu : float
        Voxels below this inside the body are lung; at or above it outside are body.
    bone_threshold_hu : float
        Cortical bone is brighter than this; set it above the densest contrast expected in
        the pulmonary arteries.
    cavity_margin_mm : float
        Margin added around the chest cavity before zeroing the rest.
    segment_pixel_mm : float
        Segmentation runs on a grid downsampled to about this pixel size, for speed.
    """

    num_slices: int = 96
    slice_spacing_mm: float = 3.0
    input_size: int = 386
    channels: int = 3
    window_center: float = 100.0
    window_width: float = 700.0
    segment: bool = True
    crop: bool = False
    min_slices: int = 10
    spacing_tolerance: float = 0.05
    lung_threshold_hu: float = -400.0
    bone_threshold_hu: float = 600.0
    cavity_margin_mm: float = 3.0
    segment_pixel_mm: float = 2.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"{f.name} must be true or false, not {value!r}.")
            elif f.type == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{f.name} must be an integer, not {value!r}.")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{f.name} must be a number, not {value!r}.")
        for name in ("num_slices", "input_size", "min_slices"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}.")
        for name in ("slice_spacing_mm", "window_width", "segment_pixel_mm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}.")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}.")
        if not 0.0 <= self.spacing_tolerance < 1.0:
            raise ValueError(
                f"spacing_tolerance is a fraction in [0, 1), not {self.spacing_tolerance}."
            )
        if self.cavity_margin_mm < 0:
            raise ValueError(f"cavity_margin_mm must not be negative, not {self.cavity_margin_mm}.")
        if self.crop and not self.segment:
            raise ValueError("crop needs segment: the crop is the square around the cavity.")
        if self.bone_threshold_hu <= self.lung_threshold_hu:
            raise ValueError("bone_threshold_hu must be above lung_threshold_hu.")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-serialisable values, for the weight bundle."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Rebuild a config from :meth:`to_dict` output; missing keys take their defaults.

        Raises
        ------
        ValueError
            If a key is unknown or a value is invalid.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"Unknown preprocessing parameter(s): {', '.join(unknown)}; "
                f"known ones are {', '.join(sorted(known))}."
            )
        values = dict(data)
        # JSON and YAML write 3.0 as 3 and may read ints back for float fields.
        for f in fields(cls):
            v = values.get(f.name)
            if f.type == "float" and isinstance(v, int) and not isinstance(v, bool):
                values[f.name] = float(v)
        return cls(**values)
