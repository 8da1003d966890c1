"""Turn a CT volume into the fixed-size model input, with a slice-to-SOP mapping."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset

from model.parallel import over_ranges
from model.preprocess.config import PreprocessConfig
from model.preprocess.defect import box_extreme, filling_defect_map
from model.preprocess.reading import CTVolume, SeriesRejectedError, read_series
from model.preprocess.segment import chest_mask_lowres


@dataclass(frozen=True)
class FieldOfView:
    """The part of every source slice that the model input shows, in source pixels.

    The input is this ``height`` x ``width`` box of the ``rows`` x ``columns`` source grid,
    resized to the input size with PIL's bilinear filter (pixel centres map to pixel
    centres); :mod:`model.explain` inverts it to put a heat map back on the source slice.
    """

    top: int
    left: int
    height: int
    width: int
    rows: int
    columns: int


@dataclass
class PreprocessedSeries:
    """Model input for one series, and where each of its slices came from.

    Parameters
    ----------
    volume : numpy.ndarray
        ``(num_slices, input_size, input_size, channels)`` float32 in ``[0, 1]``, cranial
        slice first; padding slices are all zero.
    mask : numpy.ndarray
        ``(num_slices,)`` bool, True for real slices, False for padding.
    sop_instance_uids : list of str or None
        For each output slice, the SOP Instance UID of the nearest source slice; None for
        padding.
    series_instance_uid, study_instance_uid : str
        The series and its study.
    source_slices : int
        Slices read.
    source_spacing_mm : float
        Measured median spacing along the slice normal.
    timings : dict of str to float
        Seconds spent: ``read`` and ``preprocess``.
    slice_positions_mm : numpy.ndarray
        Position of each output slice along the cranially pointing normal; NaN for padding.
    headers : list of pydicom.Dataset
        The source slices' datasets without pixel data (see ``CTVolume.headers``).
    field_of_view : FieldOfView or None
        The box of the source slices that the input shows (the chest crop, or the whole
        slice).
    """

    volume: NDArray[np.float32]
    mask: NDArray[np.bool_]
    sop_instance_uids: list[str | None]
    series_instance_uid: str
    study_instance_uid: str
    source_slices: int
    source_spacing_mm: float
    timings: dict[str, float] = field(default_factory=dict)
    slice_positions_mm: NDArray[np.float64] = field(
        default_factory=lambda: np.empty(0, dtype=np.float64)
    )
    headers: list[Dataset] = field(default_factory=list, repr=False)
    field_of_view: FieldOfView | None = None


def _select_slices(
    volume: CTVolume, config: PreprocessConfig, limit: int | None
) -> tuple[NDArray[np.float32], NDArray[np.intp], NDArray[np.float64]]:
    """Slices at the target spacing from the top: HU, nearest source index and position.

    Resamples linearly along the normal when the spacing is off target by more than the
    tolerance; with ``limit``, only the first ``limit`` slices are computed.
    """
    positions = volume.positions_mm
    target = config.slice_spacing_mm
    spacing = volume.spacing_mm
    cap = len(positions) if limit is None else limit
    # A single slice has no spacing to correct.
    if len(positions) < 2 or abs(spacing - target) <= config.spacing_tolerance * target:
        n = min(cap, len(positions))
        return volume.hu[:n], np.arange(n), positions[:n].copy()
    extent = positions[0] - positions[-1]
    n = int(np.floor(extent / target + 1e-6)) + 1
    if limit is not None:
        n = min(n, limit)
    wanted = positions[0] - target * np.arange(n)
    # positions decrease; search on the negated, increasing copy.
    upper = np.clip(np.searchsorted(-positions, -wanted, side="right") - 1, 0, len(positions) - 2)
    lower = upper + 1
    gap = positions[upper] - positions[lower]
    weight = np.clip((positions[upper] - wanted) / gap, 0.0, 1.0).astype(np.float32)
    hu = np.empty((n, *volume.hu.shape[1:]), dtype=np.float32)
    for k in range(n):  # per slice keeps the arithmetic in cache
        np.multiply(volume.hu[upper[k]], 1.0 - weight[k], out=hu[k])
        if weight[k] > 0.0:
            hu[k] += weight[k] * volume.hu[lower[k]]
    nearest = np.where(weight < 0.5, upper, lower)
    return hu, nearest, wanted


def lung_window(cavity_area: NDArray[np.integer], num_slices: int) -> int:
    """First slice of the ``num_slices`` window that holds the most chest cavity.

    Among windows that tie (the whole cavity fits in several), the middle one, so the
    cavity is centred. A series without any cavity keeps the top window.

    Parameters
    ----------
    cavity_area : numpy.ndarray
        Cavity pixels per slice, cranial slice first.
    num_slices : int
        The window's length.
    """
    area = np.asarray(cavity_area, dtype=np.int64)
    if len(area) <= num_slices or not area.any():
        return 0
    running = np.concatenate([[0], np.cumsum(area)])
    sums = running[num_slices:] - running[:-num_slices]
    best = np.flatnonzero(sums == sums.max())
    return int(best[len(best) // 2])


def _window(hu: NDArray[np.float32], centre: float, width: float) -> NDArray[np.float32]:
    out = hu - np.float32(centre - width / 2.0)
    out *= np.float32(1.0 / width)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _resize(stack: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    """Bilinear in-plane resize (antialiased when shrinking); PIL is the fastest here."""
    out = np.empty((len(stack), size, size), dtype=np.float32)
    if stack.shape[1:] == (size, size):
        out[:] = stack
        return out
    for k, image in enumerate(stack):  # per slice, not per pixel
        out[k] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    # Bilinear weights are non-negative and sum to one, so values stay within [0, 1].
    return out


def neighbour_slices(stack: NDArray[np.float32], offset: int) -> NDArray[np.float32]:
    """``stack`` shifted along the slices: entry k is slice k + offset (-1 above, 1 below).

    Where that slice does not exist, the edge slice stands in, so the stack's first and
    last slices see themselves rather than an empty neighbour.
    """
    index = np.clip(np.arange(len(stack)) + offset, 0, len(stack) - 1)
    return stack[index]


def _source_index(n_in: int, n_out: int) -> NDArray[np.intp]:
    """Source pixel under each output pixel's centre, for a resize of ``n_in`` to ``n_out``."""
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out)
    return np.minimum(centres.astype(np.intp), n_in - 1)


def _max_resize(stack: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    """Shrink ``(slices, rows, columns)`` to ``size`` x ``size``, keeping each box's maximum.

    Each output pixel takes the largest value of the source box around the pixel under
    its centre, the box wide enough that the boxes cover every source pixel: a lit pixel
    survives any shrink factor, where a bilinear resize would average it away.
    """
    rows, cols = stack.shape[1:]
    side = 2 * (-(-max(rows, cols) // size) // 2) + 1
    peaks = box_extreme(stack, side, peak=True) if side > 1 else stack
    r, c = _source_index(rows, size), _source_index(cols, size)
    return np.ascontiguousarray(peaks[:, r][:, :, c])


def _chest_square(
    cavity: NDArray[np.bool_], f: int, rows: int, cols: int
) -> tuple[int, int, int, int]:
    """The square (top, left, height, width) around a series' chest cavity, in pixels.

    ``cavity`` is the union over slices of the low-resolution cavity mask (``f`` pixels per
    cell). The square is centred on the cavity's bounding box and kept inside the image;
    the whole image when no cavity was found.
    """
    hit_r, hit_c = np.flatnonzero(cavity.any(axis=1)), np.flatnonzero(cavity.any(axis=0))
    if hit_r.size == 0:
        return 0, 0, rows, cols
    r0, r1 = hit_r[0] * f, min(rows, (hit_r[-1] + 1) * f)
    c0, c1 = hit_c[0] * f, min(cols, (hit_c[-1] + 1) * f)
    side = min(max(r1 - r0, c1 - c0), rows, cols)
    top = int(np.clip((r0 + r1 - side) // 2, 0, rows - side))
    left = int(np.clip((c0 + c1 - side) // 2, 0, cols - side))
    return top, left, side, side


def _channel_images(
    field_hu: NDArray[np.float32], config: PreprocessConfig, pixel_mm: float
) -> list[NDArray[np.float32]]:
    """The input channels of some slices of the field of view, before the cavity mask.

    Each is ``(slices, input_size, input_size)``; for ``pe_neighbours`` all three are the
    slice's own PE window (the neighbours are shifted in after the mask, over the series).
    """
    size = config.input_size
    windows = config.windows()
    if config.channel_windows == "repeat":
        # Window, then resize: the paper's order, kept so older bundles see the same input.
        return [_resize(_window(field_hu, *windows[0]), size)] * config.channels
    if config.channel_windows == "pe_neighbours":
        return [_window(_resize(field_hu, size), *windows[0])] * 3
    # One resize of the HU, then each window: a third of the resizing.
    resized = _resize(field_hu, size)
    channels = [_window(resized, centre, width) for centre, width in windows]
    if config.channel_windows == "pe_lung_defect":
        # From the source pixels, shrunk by the maximum: a defect a few source pixels
        # wide would not survive a bilinear resize.
        defects = filling_defect_map(
            field_hu,
            pixel_mm,
            surround_hu=config.defect_surround_hu,
            drop_isolated=config.defect_drop_isolated,
        )
        channels.append(_max_resize(defects, size))
    return channels


def preprocess_volume(
    volume: CTVolume, config: PreprocessConfig, threads: int = 1
) -> PreprocessedSeries:
    """Turn a CT volume into model input: resample, segment, crop, window, resize, pad.

    Parameters
    ----------
    volume : CTVolume
        From :func:`~model.preprocess.reading.read_series`.
    config : PreprocessConfig
        Every parameter; the weight bundle records it.
    threads : int
        Threads for the per-slice steps (windows, resize, defect map, mask); the output
        is the same for any count. One where processes already share out the studies.

    Returns
    -------
    PreprocessedSeries
        The input tensor, its slice mask and the slice-to-SOP mapping; ``timings`` holds
        ``preprocess``.
    """
    start = time.perf_counter()
    # The top window needs only its own slices resampled; the lung window looks at all.
    limit = config.num_slices if config.z_window == "top" else None
    hu, nearest, positions = _select_slices(volume, config, limit)
    rows, cols = hu.shape[1:]
    cavity: NDArray[np.bool_] | None = None
    f = 1
    if config.segment or config.z_window == "lungs":
        cavity, f = chest_mask_lowres(
            hu,
            volume.pixel_spacing,
            lung_threshold_hu=config.lung_threshold_hu,
            bone_threshold_hu=config.bone_threshold_hu,
            margin_mm=config.cavity_margin_mm,
            segment_pixel_mm=config.segment_pixel_mm,
        )
    if cavity is not None and len(hu) > config.num_slices:
        first = lung_window(cavity.sum(axis=(1, 2)), config.num_slices)
        chosen = slice(first, first + config.num_slices)
        hu, nearest, positions = hu[chosen], nearest[chosen], positions[chosen]
        cavity = cavity[chosen]
    n = len(hu)
    size = config.input_size
    top, left, side_r, side_c = 0, 0, rows, cols
    if config.segment and config.crop:
        assert cavity is not None
        top, left, side_r, side_c = _chest_square(np.any(cavity, axis=0), f, rows, cols)
    field_hu = hu[:, top : top + side_r, left : left + side_c]
    # Zeroed pages come from the system for free: no pass over the padding slots.
    out = np.zeros((config.num_slices, size, size, config.channels), dtype=np.float32)
    inside: NDArray[np.bool_] | None = None
    if config.segment:
        assert cavity is not None
        # The cavity mask looked up under each output pixel: no full-resolution mask.
        r = np.minimum((top + _source_index(side_r, size)) // f, cavity.shape[1] - 1)
        c = np.minimum((left + _source_index(side_c, size)) // f, cavity.shape[2] - 1)
        inside = cavity[:, r][:, :, c]
    pixel_mm = float(np.mean(volume.pixel_spacing))

    def fill(part: slice) -> None:
        images = _channel_images(field_hu[part], config, pixel_mm)
        # float32 times float32: multiplying by a bool array is several times slower.
        weight = None if inside is None else inside[part].astype(np.float32)
        for channel, image in enumerate(images):
            if weight is None:
                out[part, ..., channel] = image
            else:
                np.multiply(image, weight, out=out[part, ..., channel])

    # Every step after the segmentation is per slice: the slices are shared out among
    # threads, and the result does not depend on how many.
    over_ranges(fill, n, threads)
    if config.channel_windows == "pe_neighbours":
        # After the mask, so a neighbour channel shows that slice as its own slot would.
        out[:n, ..., 0] = neighbour_slices(out[:n, ..., 1], -1)
        out[:n, ..., 2] = neighbour_slices(out[:n, ..., 1], 1)
    mask = np.zeros(config.num_slices, dtype=bool)
    mask[:n] = True
    uids: list[str | None] = [volume.sop_instance_uids[i] for i in nearest]
    uids += [None] * (config.num_slices - n)
    out_positions = np.full(config.num_slices, np.nan)
    out_positions[:n] = positions
    return PreprocessedSeries(
        volume=out,
        mask=mask,
        sop_instance_uids=uids,
        series_instance_uid=volume.series_instance_uid,
        study_instance_uid=volume.study_instance_uid,
        source_slices=len(volume.positions_mm),
        source_spacing_mm=volume.spacing_mm,
        timings={"preprocess": time.perf_counter() - start},
        slice_positions_mm=out_positions,
        headers=volume.headers,
        field_of_view=FieldOfView(top, left, side_r, side_c, rows, cols),
    )


def preprocess_series(
    files: Sequence[str | Path],
    config: PreprocessConfig,
    threads: int = 1,
    decoders: Executor | None = None,
) -> PreprocessedSeries:
    """Read one series and turn it into model input; the one path training and daemon share.

    Parameters
    ----------
    files : sequence of str or Path
        Every DICOM file of the series, in any order.
    config : PreprocessConfig
        Every parameter; the weight bundle records it.
    threads : int
        Threads for the per-slice steps (see :func:`preprocess_volume`).
    decoders : concurrent.futures.Executor, optional
        Processes that decode compressed pixel data (see :func:`read_series`).

    Returns
    -------
    PreprocessedSeries
        With ``timings`` holding ``read`` and ``preprocess`` seconds.

    Raises
    ------
    SeriesRejectedError
        If the files are not one usable CT series.
    """
    start = time.perf_counter()
    volume = read_series(files, min_slices=config.min_slices, decoders=decoders)
    read_s = time.perf_counter() - start
    result = preprocess_volume(volume, config, threads)
    result.timings = {"read": read_s, "preprocess": result.timings["preprocess"]}
    return result


def preprocess_or_reason(
    job: tuple[Sequence[str | Path], PreprocessConfig],
) -> PreprocessedSeries | str:
    """:func:`preprocess_series` of ``(files, config)`` for a worker process: a series
    that cannot be used gives the reason instead of raising, so that it does not end a
    ``process_map`` over many series."""
    files, config = job
    try:
        return preprocess_series(files, config)
    except (SeriesRejectedError, OSError) as err:
        return str(err)
