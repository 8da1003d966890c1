"""A montage of windowed slices of one phantom, with the emboli outlined, for people to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from scipy import ndimage

from model.synthetic.phantom import Phantom

WINDOW = (700.0, 100.0)
"""Window width and level in HU: a mediastinal window that shows clots in bright arteries."""


def window(
    hu: NDArray[np.int16], width: float = WINDOW[0], level: float = WINDOW[1]
) -> NDArray[np.uint8]:
    """Map HU to 8-bit grey levels with a window width and level."""
    lo = level - width / 2.0
    scaled = (hu.astype(np.float32) - lo) * (255.0 / width)
    return np.clip(scaled, 0.0, 255.0).astype(np.uint8)


def choose_slices(phantom: Phantom, n: int) -> list[int]:
    """Pick ``n`` slices: every embolus's middle slice first, the rest spread over the lungs."""
    chosen: list[int] = []
    for e in phantom.emboli:
        mid = e.slices[len(e.slices) // 2]
        if mid not in chosen:
            chosen.append(mid)
    chosen = chosen[: max(n // 2, 1)] if len(chosen) > n // 2 else chosen
    s = phantom.grid.s
    lo, hi = (
        np.searchsorted(s, 0.15 * phantom.anatomy.lung_height),
        np.searchsorted(s, 0.95 * phantom.anatomy.lung_height),
    )
    for k in np.linspace(lo, max(lo, hi - 1), n):
        if len(chosen) >= n:
            break
        index = round(float(k))
        if all(abs(index - c) > 1 for c in chosen):
            chosen.append(index)
    return sorted(chosen[:n])


def render_preview(
    phantom: Phantom, columns: int = 4, rows: int = 3, tile: int = 384
) -> Image.Image:
    """Return a montage of windowed slices (W700/L100) with each embolus outlined in red.

    Parameters
    ----------
    phantom : Phantom
        The study to show.
    columns, rows : int
        Montage layout.
    tile : int
        Size in pixels of each slice in the montage.
    """
    slices = choose_slices(phantom, columns * rows)
    sheet = Image.new("RGB", (columns * tile, rows * tile), "black")
    draw = ImageDraw.Draw(sheet)
    for i, k in enumerate(slices):
        grey = Image.fromarray(window(phantom.hu[k])).resize(
            (tile, tile), Image.Resampling.BILINEAR
        )
        rgb = np.asarray(grey.convert("RGB")).copy()
        mask = phantom.embolus_mask[k]
        if mask.any():
            small = (
                np.asarray(
                    Image.fromarray(mask.astype(np.uint8) * 255).resize(
                        (tile, tile), Image.Resampling.NEAREST
                    )
                )
                > 0
            )
            small = ndimage.binary_dilation(small, iterations=2)
            edge = small & ~ndimage.binary_erosion(small, iterations=2)
            rgb[edge] = (255, 40, 40)
        x0, y0 = (i % columns) * tile, (i // columns) * tile
        sheet.paste(Image.fromarray(rgb), (x0, y0))
        label = f"slice {k + 1}/{phantom.n_slices}" + ("  PE" if phantom.slice_labels[k] else "")
        draw.text(
            (x0 + 6, y0 + 4), label, fill=(255, 255, 0) if phantom.slice_labels[k] else "white"
        )
    return sheet


def write_preview(phantom: Phantom, path: str | Path) -> Path:
    """Write :func:`render_preview` of a phantom as a PNG file and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_preview(phantom).save(path, format="PNG", optimize=True)
    return path
