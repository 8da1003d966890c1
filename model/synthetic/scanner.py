"""Scanner model: tissue labels to Hounsfield units with contrast, blur, noise and streaks."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from model.synthetic.shapes import Grid, Point
from model.synthetic.tissue import Tissue

T = Tissue

HU_MIN = -1024
HU_MAX = 3071
"""The HU range a 12-bit CT image with rescale intercept -1024 can hold."""


@dataclass(frozen=True)
class Contrast:
    """Per-study attenuation and image-quality settings.

    Parameters
    ----------
    pa_hu : float
        Enhancement of the right heart and pulmonary arteries (the bolus).
    aorta_hu : float
        Enhancement of the left heart, pulmonary veins and aorta.
    svc_hu : float
        Undiluted contrast in the superior vena cava.
    embolus_hu : float
        Attenuation of the clot.
    noise_sd : float
        Standard deviation of the quantum noise in HU, after blurring (the dose).
    blur_sigma : float
        Gaussian point-spread function in pixels (partial volume).
    streaks : bool
        Whether dense contrast in the superior vena cava casts streaks.
    lung_hu, fat_hu, bone_hu : float
        Attenuation of aerated lung, fat and cortical bone.
    """

    pa_hu: float
    aorta_hu: float
    svc_hu: float
    embolus_hu: float
    noise_sd: float
    blur_sigma: float
    streaks: bool
    lung_hu: float
    fat_hu: float
    bone_hu: float


def sample_contrast(
    rng: np.random.Generator,
    pa_hu: tuple[float, float],
    noise_sd: tuple[float, float],
    streaks: bool | None,
) -> Contrast:
    """Draw a contrast and image-quality setting for one study.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random stream.
    pa_hu, noise_sd : tuple of float
        Ranges for the bolus and the dose, from the difficulty.
    streaks : bool or None
        Force streaks on or off; None lets the study decide (about one in three).
    """
    pa = float(rng.uniform(*pa_hu))
    svc = float(rng.uniform(300.0, 2200.0))
    return Contrast(
        pa_hu=pa,
        aorta_hu=pa * float(rng.uniform(0.45, 0.95)),
        svc_hu=svc,
        embolus_hu=float(rng.uniform(25.0, 65.0)),
        noise_sd=float(rng.uniform(*noise_sd)),
        blur_sigma=float(rng.uniform(0.55, 0.85)),
        streaks=(svc > 1000.0 and rng.random() < 0.6) if streaks is None else streaks,
        lung_hu=float(rng.uniform(-875.0, -830.0)),
        fat_hu=float(rng.uniform(-110.0, -90.0)),
        bone_hu=float(rng.uniform(900.0, 1150.0)),
    )


def hu_table(c: Contrast) -> NDArray[np.float32]:
    """Return the noiseless HU of each tissue label as a 256-entry lookup table."""
    lut = np.full(256, -1000.0, dtype=np.float32)
    values = {
        T.AIR: -1000.0,
        T.SKIN: 30.0,
        T.FAT: c.fat_hu,
        T.MUSCLE: 45.0,
        T.LUNG: c.lung_hu,
        T.BONE_CORTICAL: c.bone_hu,
        T.BONE_MARROW: 420.0,
        T.CARTILAGE: 110.0,
        T.CSF: 10.0,
        T.MEDIASTINAL_FAT: c.fat_hu + 15.0,
        T.ABDOMEN: 75.0,
        T.MYOCARDIUM: 95.0,
        T.RIGHT_ATRIUM: 0.5 * (c.pa_hu + min(c.svc_hu, 2.0 * c.pa_hu)) * 0.9,
        T.RIGHT_VENTRICLE: c.pa_hu,
        T.LEFT_VENTRICLE: c.aorta_hu,
        T.LEFT_ATRIUM: c.aorta_hu,
        T.AORTA: c.aorta_hu,
        T.SVC: c.svc_hu,
        T.PULMONARY_ARTERY: c.pa_hu,
        T.PULMONARY_VEIN: c.aorta_hu * 0.95,
        T.EMBOLUS: c.embolus_hu,
        T.AIRWAY: -1000.0,
        T.AIRWAY_WALL: 40.0,
        T.ESOPHAGUS: 40.0,
    }
    for label, hu in values.items():
        lut[int(label)] = hu
    return lut


def _kernel_gain(sigma: float) -> float:
    """How much a 2-D Gaussian blur of ``sigma`` pixels shrinks white noise's SD."""
    radius = int(3.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    # The 2-D kernel is separable, so the noise SD shrinks by the 1-D sum of squares.
    return float((k**2).sum())


def _streak_pattern(rng: np.random.Generator, half: int, pixel: float) -> NDArray[np.float32]:
    """Alternating bright and dark rays around a dense source, unit amplitude."""
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32) * pixel
    theta = np.arctan2(yy, xx)
    r = np.hypot(xx, yy)
    pattern = np.zeros_like(r)
    for _ in range(int(rng.integers(4, 9))):
        angle = float(rng.uniform(-math.pi, math.pi))
        width = float(rng.uniform(0.015, 0.05))
        sign = 1.0 if rng.random() < 0.4 else -1.0
        d = np.angle(np.exp(1j * (theta - angle))).astype(np.float32)
        pattern += sign * np.exp(-0.5 * (d / width) ** 2)
    pattern *= np.exp(-r / 60.0) * (r > 10.0)
    return pattern.astype(np.float32)


def render(
    labels: NDArray[np.uint8],
    grid: Grid,
    contrast: Contrast,
    rng: np.random.Generator,
    lung_gradient: tuple[float, float],
    svc_path: list[Point],
) -> NDArray[np.int16]:
    """Turn the label volume into a CT image in HU.

    Each slice gets the tissue attenuations, a gravity-dependent lung density gradient,
    optional streaks from the superior vena cava, correlated quantum noise and a Gaussian
    point-spread function, and is rounded and clipped to ``[-1024, 3071]``.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(s, y, x)`` tissue labels.
    grid : Grid
        Voxel coordinates.
    contrast : Contrast
        Attenuation and image-quality settings.
    rng : numpy.random.Generator
        Noise stream.
    lung_gradient : tuple of float
        ``(y0, hu_per_mm)``: lung density rises by ``hu_per_mm`` per millimetre behind ``y0``.
    svc_path : list of Point
        Centreline of the superior vena cava, for the streaks.

    Returns
    -------
    numpy.ndarray
        ``int16`` HU volume of shape ``grid.shape``.
    """
    nz, ny, nx = grid.shape
    lut = hu_table(contrast)
    gain = _kernel_gain(contrast.blur_sigma)
    pad = 32
    pool = rng.standard_normal((8, ny + pad, nx + pad), dtype=np.float32)
    pool *= np.float32(contrast.noise_sd / gain)
    offsets = rng.integers(0, pad, size=(nz, 3))
    # Lung parenchyma: denser towards the back, with a smooth texture that drifts slowly.
    ramp = ((grid.y - lung_gradient[0]) * lung_gradient[1]).astype(np.float32)
    texture = ndimage.gaussian_filter(
        rng.standard_normal((ny + pad, nx + pad), dtype=np.float32), 4.0
    )
    texture *= np.float32(12.0 / (float(texture.std()) or 1.0))

    pixel = grid.pixel_spacing
    streak = None
    if contrast.streaks:
        half = int(110.0 / pixel)
        amp = min(250.0, (contrast.svc_hu - 700.0) / 6.0)
        streak = _streak_pattern(rng, half, pixel) * np.float32(max(amp, 0.0))
    svc_top = min(p[2] for p in svc_path)
    svc_bottom = svc_path[-2][2]

    out = np.empty(grid.shape, dtype=np.int16)
    blurred = np.empty((ny, nx), dtype=np.float32)
    for k in range(nz):
        lab = labels[k]
        h = lut[lab]
        o = offsets[k]
        drift = k // 3
        lung = lab == T.LUNG
        h += lung * (
            ramp[:, None] + texture[(drift % pad) : (drift % pad) + ny, o[2] // 4 : o[2] // 4 + nx]
        )
        h += pool[o[0] % 8, o[1] : o[1] + ny, o[2] : o[2] + nx]
        s = float(grid.s[k])
        if streak is not None and svc_top <= s <= svc_bottom:
            _add_streak(h, grid, streak, _on_path(svc_path, s))
        ndimage.gaussian_filter(h, contrast.blur_sigma, output=blurred, truncate=3.0)
        np.clip(blurred, HU_MIN, HU_MAX, out=blurred)
        np.rint(blurred, out=blurred)
        out[k] = blurred
    return out


def _on_path(path: list[Point], s: float) -> tuple[float, float]:
    """Return ``(x, y)`` of a polyline where it crosses depth ``s``."""
    for p0, p1 in itertools.pairwise(path):
        if min(p0[2], p1[2]) <= s <= max(p0[2], p1[2]) and p1[2] != p0[2]:
            t = (s - p0[2]) / (p1[2] - p0[2])
            return (p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1]))
    return (path[-1][0], path[-1][1])


def _add_streak(
    h: NDArray[np.float32], grid: Grid, streak: NDArray[np.float32], centre: tuple[float, float]
) -> None:
    """Add a streak pattern centred on ``centre``, cropped to the image."""
    half = streak.shape[0] // 2
    ci = int(np.searchsorted(grid.y, centre[1]))
    cj = int(np.searchsorted(grid.x, centre[0]))
    ny, nx = h.shape
    r0, r1 = max(0, ci - half), min(ny, ci + half + 1)
    c0, c1 = max(0, cj - half), min(nx, cj + half + 1)
    if r1 <= r0 or c1 <= c0:
        return
    h[r0:r1, c0:c1] += streak[r0 - ci + half : r1 - ci + half, c0 - cj + half : c1 - cj + half]
