"""Vectorised painting of analytic shapes into a label volume.

Every shape is evaluated only inside its own bounding box, on voxel centres given in
millimetres in the phantom's body frame, so building a 512x512x120 phantom stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Point = tuple[float, float, float]
"""A point ``(x, y, s)`` in millimetres in the body frame."""


@dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates of the phantom in the body frame.

    The body frame has ``x`` towards the patient's left, ``y`` towards the patient's back
    (both in millimetres, relative to the centre of the body) and ``s`` towards the feet,
    in millimetres below the lung apices. Axis order of every volume is ``(s, y, x)``,
    that is ``(slice, row, column)``.

    Parameters
    ----------
    x : numpy.ndarray
        Column centres, shape ``(nx,)``.
    y : numpy.ndarray
        Row centres, shape ``(ny,)``.
    s : numpy.ndarray
        Slice centres, shape ``(nz,)``, increasing (head to foot).
    """

    x: NDArray[np.float32]
    y: NDArray[np.float32]
    s: NDArray[np.float32]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The volume shape ``(nz, ny, nx)``."""
        return (len(self.s), len(self.y), len(self.x))

    @property
    def pixel_spacing(self) -> float:
        """In-plane spacing in millimetres."""
        return float(self.x[1] - self.x[0])

    @property
    def slice_spacing(self) -> float:
        """Distance between slice centres in millimetres."""
        return float(self.s[1] - self.s[0]) if len(self.s) > 1 else 1.0

    def index_range(self, axis: int, lo: float, hi: float) -> slice:
        """Return the slice of voxel indices along ``axis`` whose centres lie in ``[lo, hi]``."""
        coords = (self.s, self.y, self.x)[axis]
        start = int(np.searchsorted(coords, lo, side="left"))
        stop = int(np.searchsorted(coords, hi, side="right"))
        return slice(start, stop)

    def box(self, lo: Point, hi: Point) -> tuple[slice, slice, slice] | None:
        """Return index slices ``(s, y, x)`` covering the box ``lo..hi``, or None if empty."""
        sl = (
            self.index_range(0, lo[2], hi[2]),
            self.index_range(1, lo[1], hi[1]),
            self.index_range(2, lo[0], hi[0]),
        )
        if any(s.stop <= s.start for s in sl):
            return None
        return sl


def ellipse_2d(
    grid: Grid, cx: float, cy: float, a: float, b: float
) -> tuple[tuple[slice, slice], NDArray[np.bool_]] | None:
    """Return the bounding box and in-box mask of an axis-aligned ellipse in one slice.

    Parameters
    ----------
    grid : Grid
        Coordinates of the volume.
    cx, cy : float
        Centre in millimetres.
    a, b : float
        Semi-axes along ``x`` and ``y`` in millimetres.

    Returns
    -------
    tuple or None
        ``((rows, cols), mask)``, or None when the ellipse covers no voxel centre.
    """
    if a <= 0 or b <= 0:
        return None
    rows = grid.index_range(1, cy - b, cy + b)
    cols = grid.index_range(2, cx - a, cx + a)
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return None
    dy = (grid.y[rows] - cy) / b
    # Half-width of the ellipse on each row; a row-span test is cheaper than a quadratic form.
    half = a * np.sqrt(np.clip(1.0 - dy * dy, 0.0, None))
    mask = np.abs(grid.x[cols][None, :] - cx) <= half[:, None]
    return (rows, cols), mask


def paint_ellipse(
    labels2d: NDArray[np.uint8],
    grid: Grid,
    cx: float,
    cy: float,
    a: float,
    b: float,
    label: int,
    allowed: NDArray[np.bool_] | None = None,
) -> None:
    """Set ``label`` inside an ellipse of one slice, optionally only over allowed labels.

    ``allowed`` is a boolean lookup table indexed by the current label.
    """
    found = ellipse_2d(grid, cx, cy, a, b)
    if found is None:
        return
    (rows, cols), mask = found
    crop = labels2d[rows, cols]
    if allowed is not None:
        mask &= allowed[crop]
    crop[mask] = label


def _coords(
    grid: Grid, box: tuple[slice, slice, slice]
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Broadcastable ``x, y, s`` coordinates of a box."""
    return (
        grid.x[box[2]][None, None, :],
        grid.y[box[1]][None, :, None],
        grid.s[box[0]][:, None, None],
    )


def tube_mask(
    grid: Grid, p0: Point, p1: Point, r0: float, r1: float
) -> tuple[tuple[slice, slice, slice], NDArray[np.bool_]] | None:
    """Return the bounding box and mask of a tapered tube around the segment ``p0``-``p1``.

    The tube has radius ``r0`` at ``p0`` and ``r1`` at ``p1`` with spherical caps, so
    consecutive segments of a polyline join without gaps.
    """
    r = max(r0, r1)
    lo = (min(p0[0], p1[0]) - r, min(p0[1], p1[1]) - r, min(p0[2], p1[2]) - r)
    hi = (max(p0[0], p1[0]) + r, max(p0[1], p1[1]) + r, max(p0[2], p1[2]) + r)
    box = grid.box(lo, hi)
    if box is None:
        return None
    x, y, s = _coords(grid, box)
    d = np.subtract(p1, p0, dtype=np.float64)
    dd = float(d @ d) or 1e-9
    ex, ey, es = x - p0[0], y - p0[1], s - p0[2]
    t = np.clip((ex * d[0] + ey * d[1] + es * d[2]) / dd, 0.0, 1.0)
    dist2 = (ex - t * d[0]) ** 2 + (ey - t * d[1]) ** 2 + (es - t * d[2]) ** 2
    radius = r0 + (r1 - r0) * t
    return box, dist2 <= radius * radius


def ellipsoid_mask(
    grid: Grid, centre: Point, axes: Point, direction: Point | None = None
) -> tuple[tuple[slice, slice, slice], NDArray[np.bool_]] | None:
    """Return the bounding box and mask of an ellipsoid.

    Parameters
    ----------
    grid : Grid
        Coordinates of the volume.
    centre : Point
        Centre ``(x, y, s)`` in millimetres.
    axes : Point
        Semi-axes in millimetres. Without ``direction`` they lie along ``x, y, s``. With it,
        ``axes[0]`` is the semi-axis along ``direction`` and ``axes[1]`` the radius across it
        (``axes[2]`` is ignored), giving a spheroid along an arbitrary axis.
    direction : Point, optional
        Unit vector of a spheroid's long axis.
    """
    r = max(axes) if direction is None else max(axes[0], axes[1])
    extent = axes if direction is None else (r, r, r)
    lo = (centre[0] - extent[0], centre[1] - extent[1], centre[2] - extent[2])
    hi = (centre[0] + extent[0], centre[1] + extent[1], centre[2] + extent[2])
    box = grid.box(lo, hi)
    if box is None:
        return None
    x, y, s = _coords(grid, box)
    ex, ey, es = x - centre[0], y - centre[1], s - centre[2]
    if direction is None:
        q = (ex / axes[0]) ** 2 + (ey / axes[1]) ** 2 + (es / axes[2]) ** 2
    else:
        along = ex * direction[0] + ey * direction[1] + es * direction[2]
        across2 = ex * ex + ey * ey + es * es - along * along
        q = (along / axes[0]) ** 2 + across2 / axes[1] ** 2
    return box, q <= 1.0


def paint_mask(
    labels: NDArray[np.uint8],
    found: tuple[tuple[slice, slice, slice], NDArray[np.bool_]] | None,
    label: int,
    allowed: NDArray[np.bool_] | None = None,
    record: NDArray[np.bool_] | None = None,
) -> int:
    """Write ``label`` where a shape's mask is set, optionally only over allowed labels.

    Parameters
    ----------
    labels : numpy.ndarray
        The ``(s, y, x)`` label volume, modified in place.
    found : tuple or None
        A ``(box, mask)`` pair from :func:`tube_mask` or :func:`ellipsoid_mask`.
    label : int
        The tissue label to write.
    allowed : numpy.ndarray, optional
        Boolean lookup table over labels: only voxels whose current label is allowed change.
    record : numpy.ndarray, optional
        A boolean volume in which the painted voxels are also set.

    Returns
    -------
    int
        The number of voxels painted.
    """
    if found is None:
        return 0
    box, mask = found
    crop = labels[box]
    if allowed is not None:
        mask = mask & allowed[crop]
    crop[mask] = label
    if record is not None:
        record[box] |= mask
    return int(np.count_nonzero(mask))


def allowed_lut(labels: list[int] | tuple[int, ...]) -> NDArray[np.bool_]:
    """Return a boolean lookup table over the 256 label values with ``labels`` set."""
    lut = np.zeros(256, dtype=bool)
    lut[list(labels)] = True
    return lut
