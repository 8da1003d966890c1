"""Classical, weight-free chest-cavity segmentation: lungs, heart and mediastinum.

The body is the largest connected component of tissue denser than air; the lungs are the
large low-density regions inside it; the cavity is their convex hull (which takes in the
heart and mediastinum between them) plus a margin, less the bone that reaches into it.
Everything runs on whole arrays with scipy.ndimage; there are no per-pixel loops.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

# Connectivity within a slice only: holes and bone are judged slice by slice.
_IN_SLICE = np.zeros((3, 3, 3), dtype=bool)
_IN_SLICE[1] = ndi.generate_binary_structure(2, 1)
# Directions of the polygon that approximates each slice's convex hull.
_HULL_DIRECTIONS = 16
# Lung components smaller than this fraction of the largest are gas elsewhere (bowel).
_MIN_LUNG_FRACTION = 0.1
# Opening that detaches the table and the arms from the trunk.
_OPENING_MM = 3.0


def _square(mask: NDArray[np.bool_], radius: int, grow: bool) -> NDArray[np.bool_]:
    """Dilate (``grow``) or erode each slice with a square of side ``2 * radius + 1``.

    Done as shifted ORs/ANDs along rows, then columns: a few whole-array operations,
    several times faster than ``scipy.ndimage`` morphology on these sizes.
    """
    if radius < 1:
        return mask
    op = np.logical_or if grow else np.logical_and
    out = mask.copy()
    for axis in (1, 2):
        src = out.copy()
        n = src.shape[axis]
        for shift in range(1, min(radius, n - 1) + 1):
            head = [slice(None)] * 3
            tail = [slice(None)] * 3
            head[axis], tail[axis] = slice(shift, None), slice(None, n - shift)
            op(out[tuple(head)], src[tuple(tail)], out=out[tuple(head)])
            op(out[tuple(tail)], src[tuple(head)], out=out[tuple(tail)])
    return out


def _fill_holes_2d(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Fill the holes of each slice: background not connected to the slice's border."""
    background = ~mask
    labels, n = ndi.label(background, _IN_SLICE)
    outer = np.zeros(n + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        outer[edge] = True
    outer[0] = True
    return mask | ~outer[labels]


def _largest_component(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _convex_fill(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Fill each slice's convex hull, approximated by a circumscribed polygon.

    The hull of a set is the hull of its leftmost and rightmost pixel in each row, and a
    polygon of slabs in a few directions bounds it; each slab turns into an interval per
    row, so the fill is two comparisons per pixel.
    """
    _, ny, nx = mask.shape
    has: NDArray[np.bool_] = np.any(mask, axis=2)
    left = mask.argmax(axis=2).astype(np.float32)
    right = (nx - 1 - mask[:, :, ::-1].argmax(axis=2)).astype(np.float32)
    rows = np.arange(ny, dtype=np.float32)
    theta = np.pi * np.arange(_HULL_DIRECTIONS) / _HULL_DIRECTIONS
    cos, sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    # Vertical slabs bound the rows; those are handled by the row extent below.
    keep = np.abs(cos) > 1e-3
    cos, sin = cos[keep], sin[keep]
    along = rows[:, None] * sin  # (ny, K)
    p_left = left[..., None] * cos + along
    p_right = right[..., None] * cos + along
    inf = np.float32(np.inf)
    lo = np.where(has[..., None], np.minimum(p_left, p_right), inf).min(axis=1)  # (nz, K)
    hi = np.where(has[..., None], np.maximum(p_left, p_right), -inf).max(axis=1)
    with np.errstate(invalid="ignore"):
        a = (lo[:, None, :] - along) / cos
        b = (hi[:, None, :] - along) / cos
        x_lo = np.minimum(a, b).max(axis=2)  # (nz, ny)
        x_hi = np.maximum(a, b).min(axis=2)
    row_idx = np.arange(ny)
    top = np.where(np.any(has, axis=1), has.argmax(axis=1), ny)
    bottom = ny - 1 - has[:, ::-1].argmax(axis=1)
    in_rows = (row_idx >= top[:, None]) & (row_idx <= bottom[:, None])
    x_lo = np.where(in_rows, x_lo - 0.5, np.inf)
    x_hi = np.where(in_rows, x_hi + 0.5, -np.inf)
    cols = np.arange(nx, dtype=np.float32)
    return (cols >= x_lo[..., None]) & (cols <= x_hi[..., None])


def _segment(
    hu: NDArray[np.float32],
    pixel_mm: float,
    lung_threshold_hu: float,
    bone_threshold_hu: float,
    margin_mm: float,
) -> NDArray[np.bool_]:
    """Chest-cavity mask of a ``(slices, rows, columns)`` volume at its own resolution."""
    dense = hu >= lung_threshold_hu
    r_open = round(_OPENING_MM / pixel_mm)
    opened = _square(_square(dense, r_open, grow=False), r_open, grow=True)
    # The largest component is the trunk: the table and air outside drop out here.
    body = _fill_holes_2d(_largest_component(opened & dense))
    lungs = body & ~dense
    labels, n = ndi.label(lungs)
    if n == 0:
        # No lungs at all (not a chest scan): keep the body rather than blank the input.
        return body
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    lungs = (sizes >= _MIN_LUNG_FRACTION * sizes.max())[labels]
    lungs[labels == 0] = False
    # The hull of the lungs holds the heart and mediastinum between them.
    cavity = _convex_fill(lungs) | lungs
    cavity = _square(cavity, round(margin_mm / pixel_mm), grow=True) & body
    # Bone that reaches outside the cavity (ribs, sternum, vertebra with its arch) is cut
    # out with its marrow. Judged per slice, so contrast in the superior vena cava, which
    # leaves the cavity above the lungs, does not take the right atrium with it.
    bright = hu > bone_threshold_hu
    labels, n = ndi.label(bright, _IN_SLICE)
    if n:
        outside = np.zeros(n + 1, dtype=bool)
        outside[labels[bright & ~cavity]] = True
        outside[0] = False
        bone = _fill_holes_2d(outside[labels])
        cavity &= ~_square(bone, max(1, round(1.5 / pixel_mm)), grow=True)
    return cavity


def _factor(pixel_spacing: tuple[float, float], segment_pixel_mm: float) -> int:
    return max(1, round(segment_pixel_mm / max(min(pixel_spacing), 1e-3)))


def _block_mean(hu: NDArray[np.float32], f: int) -> NDArray[np.float32]:
    if f == 1:
        return hu
    _, ny, nx = hu.shape
    h, w = ny // f, nx // f
    # Sum whole rows first (contiguous), then columns of the smaller result.
    rows = hu[:, 0 : h * f : f].copy()
    for a in range(1, f):
        rows += hu[:, a : h * f : f]
    out = rows[:, :, 0 : w * f : f].copy()
    for b in range(1, f):
        out += rows[:, :, b : w * f : f]
    out *= np.float32(1.0 / (f * f))
    return out


def chest_mask_lowres(
    hu: NDArray[np.floating],
    pixel_spacing: tuple[float, float],
    lung_threshold_hu: float = -400.0,
    bone_threshold_hu: float = 600.0,
    margin_mm: float = 3.0,
    segment_pixel_mm: float = 2.0,
) -> tuple[NDArray[np.bool_], int]:
    """Chest-cavity mask on a grid downsampled by an integer factor, and that factor.

    Pixel ``(i, j)`` of the full grid belongs to mask pixel ``(i // f, j // f)``, clipped
    to the mask's shape. See :func:`segment_chest` for the parameters.
    """
    volume = np.asarray(hu, dtype=np.float32)
    f = _factor(pixel_spacing, segment_pixel_mm)
    low = _block_mean(volume, f)
    pixel_mm = f * float(np.mean(pixel_spacing))
    return _segment(low, pixel_mm, lung_threshold_hu, bone_threshold_hu, margin_mm), f


def segment_chest(
    hu: NDArray[np.floating],
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    lung_threshold_hu: float = -400.0,
    bone_threshold_hu: float = 600.0,
    margin_mm: float = 3.0,
    segment_pixel_mm: float = 2.0,
) -> NDArray[np.bool_]:
    """Mask of the chest cavity (lungs, heart, mediastinum) of a HU slice or volume.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(rows, columns)`` or ``(slices, rows, columns)`` Hounsfield units. A volume
        gives a better body and lung estimate than single slices.
    pixel_spacing : tuple of float
        Row and column spacing in millimetres.
    lung_threshold_hu : float
        Lung is below this, body tissue at or above it.
    bone_threshold_hu : float
        Cortical bone is above this.
    margin_mm : float
        Margin kept around the lungs' hull.
    segment_pixel_mm : float
        Work on a grid downsampled to about this pixel size.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the same shape as ``hu``; True inside the chest cavity.
    """
    volume = np.asarray(hu)
    if volume.ndim not in (2, 3):
        raise ValueError(f"hu must be a 2-D slice or a 3-D volume, not {volume.ndim}-D.")
    stack = volume[None] if volume.ndim == 2 else volume
    low, f = chest_mask_lowres(
        stack, pixel_spacing, lung_threshold_hu, bone_threshold_hu, margin_mm, segment_pixel_mm
    )
    rows = np.minimum(np.arange(stack.shape[1]) // f, low.shape[1] - 1)
    cols = np.minimum(np.arange(stack.shape[2]) // f, low.shape[2] - 1)
    full = low[:, rows[:, None], cols[None, :]]
    return full[0] if volume.ndim == 2 else full
