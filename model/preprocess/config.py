"""The typed preprocessing configuration that a weight bundle records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

Z_WINDOWS = ("top", "lungs")
"""How the ``num_slices`` input slices are chosen from a longer series."""

CHANNEL_WINDOWS: dict[str, tuple[tuple[float, float], ...]] = {
    "repeat": (),
    # (centre, width) in HU of each channel, in channel order.
    "pe_lung_mediastinum": ((100.0, 700.0), (-600.0, 1500.0), (40.0, 400.0)),
    # The lung window replaced by a narrow clot window (W150/L50, -25 to 125 HU): in the
    # phantoms an occluded artery is a soft-tissue disc (30-60 HU) in the lung, where
    # enhanced arteries and veins (165-500 HU) saturate and air is black, so clot is the
    # only mid-grey in the lung fields.
    "pe_clot_mediastinum": ((100.0, 700.0), (50.0, 150.0), (40.0, 400.0)),
    # The PE and lung windows, then the filling-defect map (model/preprocess/defect.py),
    # which is not a window and so is not listed.
    "pe_lung_defect": ((100.0, 700.0), (-600.0, 1500.0)),
    # 2.5-D: the PE window of the slice above, the slice itself and the slice below.
    "pe_neighbours": ((100.0, 700.0),) * 3,
}
"""What the input channels hold; ``repeat`` uses the config's one window in every channel."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Every parameter that turns a CT series into model input.

    The weight bundle stores :meth:`to_dict` and inference rebuilds the config with
    :meth:`from_dict`, so training and inference cannot disagree.

    Parameters
    ----------
    num_slices : int
        Slices in the model input; a series with fewer is zero-padded at the caudal end.
    z_window : str
        Which ``num_slices`` of a longer series the model sees. ``top``: the cranial-most
        ones (the authors' code). ``lungs``: the window holding the most chest cavity, as
        found by the segmentation, so a scan that starts in the neck keeps its lung bases
        (and their emboli); centred on the cavity when all of it fits.
    slice_spacing_mm : float
        Target spacing along the slice normal.
    input_size : int
        Rows and columns of each output slice.
    channels : int
        1, or 3 for backbones with RGB input.
    channel_windows : str
        What the channels hold. ``repeat``: the one window below in every channel (the
        paper). ``pe_lung_mediastinum``: three CT windows, as the RSNA-STR 2020 winners fed
        a 2-D CNN: the PE window (W700/L100), the lung window (W1500/L-600) and the
        mediastinal window (W400/L40); needs 3 channels. ``pe_clot_mediastinum``: the
        same with a narrow clot window (W150/L50) for the lung window, so that the density
        of clot, between air and enhanced blood, stands out. ``pe_neighbours`` (2.5-D, the
        other RSNA-STR 2020 input): the PE window of the slice above, the slice itself and
        the slice below, so the CNN sees an artery bright on one slice and filled on the
        next; an edge slice stands in for its missing neighbour. Needs 3 channels.
    window_center, window_width : float
        Intensity window in HU, mapped to ``[0, 1]`` (with ``repeat``).
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
    defect_surround_hu : float
        With ``pe_lung_defect``: pixels darker than this are the dark surround that an
        occluded artery needs around most of it (model/preprocess/defect.py). -500 (the
        default, 0.5.0's map): lung only. -60: mediastinal fat too, so occluded hilar
        arteries light up.
    defect_drop_isolated : bool
        With ``pe_lung_defect``: clear lit map pixels with no lit neighbour at the source
        resolution (vessel-edge partial volume, not clot).
    """

    num_slices: int = 96
    slice_spacing_mm: float = 3.0
    input_size: int = 386
    channels: int = 3
    z_window: str = "top"
    channel_windows: str = "repeat"
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
    defect_surround_hu: float = -500.0
    defect_drop_isolated: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "str":
                if not isinstance(value, str):
                    raise ValueError(f"{f.name} must be a string, not {value!r}.")
            elif f.type == "bool":
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
        if self.z_window not in Z_WINDOWS:
            raise ValueError(
                f"z_window must be one of {', '.join(Z_WINDOWS)}, not {self.z_window!r}."
            )
        if self.channel_windows not in CHANNEL_WINDOWS:
            raise ValueError(
                f"channel_windows must be one of {', '.join(CHANNEL_WINDOWS)}, "
                f"not {self.channel_windows!r}."
            )
        if self.channel_windows != "repeat" and self.channels != 3:
            raise ValueError(f"channel_windows {self.channel_windows!r} needs channels: 3.")
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

    def windows(self) -> tuple[tuple[float, float], ...]:
        """The (centre, width) window in HU of each input channel."""
        return CHANNEL_WINDOWS[self.channel_windows] or (
            ((self.window_center, self.window_width),) * self.channels
        )

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
