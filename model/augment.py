"""Slice augmentation for the slice CNN, as the paper lists: translation, rotation, zoom,
elastic deformation, blur and Gaussian noise, and a few combinations.

Each training epoch takes every positive slice and a fresh draw of as many negatives, and
slices of both classes are augmented alike (model.training.stages.SliceBatches). Augmentation is
seeded, and it is applied only to slices of training folds: the caller passes training
slices only, and validation data never goes through this module.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

Image = NDArray[np.float32]  # (H, W, C) in [0, 1]

# Magnitudes from the authors' recipes, in pixels of a 386-pixel input; scaled to others.
_REFERENCE_SIZE = 386


def _affine(img: Image, angle_deg: float, shift: tuple[float, float], zoom: float) -> Image:
    h, w = img.shape[:2]
    theta = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) / zoom
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - rot @ (centre + np.asarray(shift))
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        out[..., c] = ndimage.affine_transform(
            img[..., c], rot, offset=offset, order=1, mode="constant", cval=0.0
        )
    return out


def rotate(img: Image, rng: np.random.Generator) -> Image:
    """Rotate by ±3–5 degrees."""
    angle = rng.uniform(3, 5) * rng.choice([-1, 1])
    return _affine(img, angle, (0.0, 0.0), 1.0)


def translate(img: Image, rng: np.random.Generator) -> Image:
    """Shift by ±10–20 pixels (at 386) in each direction."""
    scale = img.shape[0] / _REFERENCE_SIZE
    dy, dx = (rng.uniform(10, 20) * rng.choice([-1, 1]) * scale for _ in range(2))
    return _affine(img, 0.0, (dy, dx), 1.0)


def zoom(img: Image, rng: np.random.Generator) -> Image:
    """Zoom by a factor of 0.75–1.15 about the centre."""
    return _affine(img, 0.0, (0.0, 0.0), rng.uniform(0.75, 1.15))


def elastic(img: Image, rng: np.random.Generator) -> Image:
    """Smooth random displacement field (Simard et al.), a few pixels at 386."""
    h, w = img.shape[:2]
    scale = h / _REFERENCE_SIZE
    alpha, sigma = 60.0 * scale, 8.0 * scale
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.array([yy + dy, xx + dx])
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        out[..., c] = ndimage.map_coordinates(img[..., c], coords, order=1, mode="constant")
    return out


def blur(img: Image, rng: np.random.Generator) -> Image:
    """Gaussian blur, sigma 0.5–1.5 pixels (at 386)."""
    # At least half a pixel, so the recipe still blurs on small test inputs.
    sigma = max(0.5, rng.uniform(0.5, 1.5) * img.shape[0] / _REFERENCE_SIZE)
    return ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0)).astype(np.float32)


def noise(img: Image, rng: np.random.Generator) -> Image:
    """Additive Gaussian noise, sigma 0.01–0.04 of the window, clipped to [0, 1]."""
    sigma = rng.uniform(0.01, 0.04)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0.0, 1.0).astype(np.float32)


Recipe = tuple[Callable[[Image, np.random.Generator], Image], ...]

RECIPES: dict[str, Recipe] = {
    "rotate": (rotate,),
    "translate": (translate,),
    "zoom": (zoom,),
    "elastic": (elastic,),
    "blur": (blur,),
    "noise": (noise,),
    "rotate+translate": (rotate, translate),
    "zoom+noise": (zoom, noise),
    "elastic+blur": (elastic, blur),
}
"""The fixed recipes, after the authors' list."""


def augment(img: Image, rng: np.random.Generator, recipe: str | None = None) -> Image:
    """Apply one recipe (random unless named) to an (H, W, C) slice in [0, 1]."""
    name = recipe or str(rng.choice(sorted(RECIPES)))
    out = img.astype(np.float32, copy=True)
    for step in RECIPES[name]:
        out = step(out, rng)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
