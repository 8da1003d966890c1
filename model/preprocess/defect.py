"""A filling-defect map: where clot-dense pixels sit inside enhanced blood or in the lung.

An embolus in a segmental artery is a few source pixels across. Resized to the model's
input (about 1.6 mm per pixel at 192 px over the chest crop) a grey crescent in a bright
disc averages away. This map is computed at the source resolution and shrunk by taking
the maximum, so a defect of a few source pixels still lights one input pixel. It is an
input channel, not a detector: it also lights myocardium between enhanced chambers and
soft tissue between vessels, and the CNN learns from the other channels which lit pixels
are emboli.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

# Clot is 30-80 HU and partial volume smears it; enhanced blood is above 200 HU (a CTPA
# bolus reaches 250-500 HU in the pulmonary arteries).
_CLOT_HU = (-60.0, 180.0)
_BLOOD_HU = 200.0
_PLATEAU_MAX_HU = 160.0
# What counts as dark around an occluded artery, by default: lung. An artery at the hilum
# runs in mediastinal fat (about -100 HU), so a threshold above fat also finds occluded
# hilar arteries (PreprocessConfig.defect_surround_hu).
SURROUND_HU = -500.0
# The widest defect looked for: a segmental artery's lumen (5-8 mm).
_DEFECT_MM = 8.0
# How much dark surround (lung, or whatever is darker than surround_hu) an occluded
# artery needs: half of the 9 mm square around it (a segmental artery 5 mm across fills a
# quarter of it; a lobar one 8 mm across, more than half, which leaves those to the
# partial-defect term and the CNN's other channels).
_SURROUND_SQUARE_MM = 9.0
_SURROUND_FRACTION = 0.5
# A defect this many HU darker than the blood around it scores 1.
_FULL_CONTRAST_HU = 250.0
# A pixel at least this lit is part of a candidate defect (for drop_isolated, and what
# benchmarks/defect_map.py counts as lit).
LIT = 0.3


def _odd(pixels: float) -> int:
    return max(3, round(pixels) | 1)


def box_extreme(image: NDArray[np.float32], side: int, peak: bool) -> NDArray[np.float32]:
    """The maximum (``peak``) or minimum of the ``side`` x ``side`` box around each pixel
    of every slice; ``side`` odd.

    scipy's rank filters take 0.2 s for a 3x3 box over a 96-slice chest crop; windows
    doubled by shifted ``np.maximum`` are several times faster, and the map must fit in
    the worker's per-study budget.
    """
    pick = np.maximum if peak else np.minimum
    fill = -np.inf if peak else np.inf
    half = side // 2
    out = image
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (half, half)
        span = np.pad(out, pad, constant_values=fill)
        width = 1
        while width * 2 <= side:  # span[i] = extreme of the 'width' values from i
            span = pick(_take(span, 0, -width, axis), _take(span, width, None, axis))
            width *= 2
        if width < side:
            span = pick(_take(span, 0, width - side, axis), _take(span, side - width, None, axis))
        out = span
    return out


def _take(a: NDArray[np.float32], start: int, stop: int | None, axis: int) -> NDArray[np.float32]:
    index: list[slice] = [slice(None)] * a.ndim
    index[axis] = slice(start, stop)
    return a[tuple(index)]


def filling_defect_map(
    hu: NDArray[np.float32],
    pixel_mm: float,
    surround_hu: float = SURROUND_HU,
    drop_isolated: bool = False,
) -> NDArray[np.float32]:
    """Score each pixel of ``(slices, rows, columns)`` HU in ``[0, 1]`` as a filling defect.

    The larger of two terms, each computed per slice:

    - *partial defect*: clot density that a grey closing of ``_DEFECT_MM`` fills with
      enhanced blood (the black top-hat), scaled by how much darker it is than the
      blood around it;
    - *occluded artery*: a plateau of clot density (its 3x3 neighbourhood stays in the
      clot range, so not the edge of a bright vessel) with lung (or whatever is darker
      than ``surround_hu``) around most of it.

    Parameters
    ----------
    hu : numpy.ndarray
        Slices in HU, at the source resolution.
    pixel_mm : float
        In-plane pixel size.
    surround_hu : float
        Pixels darker than this count as the dark surround of an occluded artery: lung
        at the default; above -100 HU, mediastinal fat too.
    drop_isolated : bool
        Clear lit pixels with no lit 8-neighbour. Most lit pixels in negative phantoms are
        single source pixels at the edges of bright vessels (partial volume passes through
        clot density); an embolus a segmental artery wide lights tens of them.
    """
    smooth = ndimage.gaussian_filter(hu.astype(np.float32, copy=False), (0, 0.7, 0.7))
    side = _odd(_DEFECT_MM / pixel_mm)
    closed = box_extreme(box_extreme(smooth, side, peak=True), side, peak=False)
    clot = (smooth > _CLOT_HU[0]) & (smooth < _CLOT_HU[1])
    partial = (closed - smooth) * np.float32(1.0 / _FULL_CONTRAST_HU)
    np.clip(partial, 0.0, 1.0, out=partial)
    partial *= clot & (closed > _BLOOD_HU)
    plateau = (box_extreme(smooth, 3, peak=False) > _CLOT_HU[0]) & (
        box_extreme(smooth, 3, peak=True) < _PLATEAU_MAX_HU
    )
    near = _odd(_SURROUND_SQUARE_MM / pixel_mm)
    dark = ndimage.uniform_filter((smooth < surround_hu).astype(np.float32), size=(1, near, near))
    occluded = plateau & (dark > _SURROUND_FRACTION)
    score = np.maximum(partial, occluded.astype(np.float32))
    if drop_isolated:
        lit = score >= LIT
        score[lit & ~_any_neighbour(lit)] = 0.0
    return score


def _any_neighbour(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Whether any of each pixel's eight in-plane neighbours is set (not the pixel itself)."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    rows, cols = mask.shape[1:]
    out = np.zeros_like(mask)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr or dc:
                out |= padded[:, 1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols]
    return out
