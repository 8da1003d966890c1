"""Pulmonary emboli: filling defects placed inside the arterial lumen."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model.synthetic.arteries import ArterySegment
from model.synthetic.shapes import Grid, Point, allowed_lut, ellipsoid_mask, tube_mask
from model.synthetic.tissue import Tissue

T = Tissue

EMBOLUS_LEVELS = ("central", "lobar", "segmental", "subsegmental")
"""Where an embolus may sit: central means the trunk or a main pulmonary artery."""

_SEGMENT_LEVELS = {
    "central": ("trunk", "main"),
    "lobar": ("lobar",),
    "segmental": ("segmental",),
    "subsegmental": ("subsegmental",),
}


@dataclass(frozen=True)
class EmbolusDistribution:
    """How many emboli a positive study has, where they sit and how big they are.

    Parameters
    ----------
    level_weights : tuple of float
        Relative frequency of each level in :data:`EMBOLUS_LEVELS`.
    count_weights : tuple of float
        Relative frequency of 1, 2, 3, ... emboli in a positive study.
    length_mm : tuple of (float, float)
        Range of embolus length for each level in :data:`EMBOLUS_LEVELS`.
    occlusion : tuple of float
        Range of the embolus radius as a fraction of the lumen radius; 1.0 occludes.
    saddle_fraction : float
        Fraction of central emboli that straddle the bifurcation of the trunk.
    min_voxels : int
        Smaller emboli are redrawn: fewer voxels than this are invisible at any dose.
    """

    level_weights: tuple[float, float, float, float]
    count_weights: tuple[float, ...]
    length_mm: tuple[tuple[float, float], ...]
    occlusion: tuple[float, float]
    saddle_fraction: float
    min_voxels: int = 6

    def __post_init__(self) -> None:
        if len(self.level_weights) != len(EMBOLUS_LEVELS) or sum(self.level_weights) <= 0:
            raise ValueError("level_weights needs one non-negative weight per embolus level.")
        if len(self.length_mm) != len(EMBOLUS_LEVELS):
            raise ValueError("length_mm needs one (min, max) range per embolus level.")
        if not self.count_weights or sum(self.count_weights) <= 0:
            raise ValueError("count_weights needs at least one positive weight.")
        if not 0.0 < self.occlusion[0] <= self.occlusion[1] <= 1.0:
            raise ValueError("occlusion must be a range within (0, 1].")


@dataclass(frozen=True)
class Embolus:
    """One embolus as built into the phantom.

    Parameters
    ----------
    centre : Point
        Centre ``(x, y, s)`` in millimetres, body frame.
    direction : Point
        Unit vector of its long axis (along the artery).
    half_length, radius : float
        Semi-axes in millimetres.
    level : str
        The level it was placed at, from :data:`EMBOLUS_LEVELS`.
    saddle : bool
        Whether it straddles the bifurcation of the pulmonary trunk.
    arteries : tuple of str
        Names of the :class:`ArterySegment` pieces its voxels occupy.
    central : bool
        Whether it occupies the trunk or a main pulmonary artery.
    right, left : bool
        Whether it occupies right-sided or left-sided arteries (main arteries included).
    voxels : int
        Number of voxels it occupies.
    slices : tuple of int
        Slice indices (head to foot, as in the volume) that hold any of its voxels.
    """

    centre: Point
    direction: Point
    half_length: float
    radius: float
    level: str
    saddle: bool
    arteries: tuple[str, ...]
    central: bool
    right: bool
    left: bool
    voxels: int
    slices: tuple[int, ...]


_IN_LUMEN = allowed_lut([T.PULMONARY_ARTERY, T.EMBOLUS])


def _touching(
    grid: Grid,
    box: tuple[slice, slice, slice],
    mask: NDArray[np.bool_],
    tree: list[ArterySegment],
) -> list[ArterySegment]:
    """Return the artery segments whose lumen overlaps a masked box."""
    out = []
    for seg in tree:
        found = tube_mask(grid, seg.p0, seg.p1, seg.r0, seg.r1)
        if found is None:
            continue
        sbox, smask = found
        inter = tuple(
            slice(max(a.start, b.start), min(a.stop, b.stop))
            for a, b in zip(box, sbox, strict=True)
        )
        if any(s.stop <= s.start for s in inter):
            continue
        own = mask[
            tuple(
                slice(i.start - b.start, i.stop - b.start) for i, b in zip(inter, box, strict=True)
            )
        ]
        theirs = smask[
            tuple(
                slice(i.start - b.start, i.stop - b.start) for i, b in zip(inter, sbox, strict=True)
            )
        ]
        if np.any(own & theirs):
            out.append(seg)
    return out


def _draw_shape(
    rng: np.random.Generator, level: str, tree: list[ArterySegment], dist: EmbolusDistribution
) -> tuple[Point, Point, float, float, bool]:
    """Draw an embolus's centre, axis, half-length and radius at a given level."""
    if level == "central" and rng.random() < dist.saddle_fraction:
        trunk = next(s for s in tree if s.name == "trunk")
        centre = trunk.p1
        direction = _norm((1.0, 0.1 * rng.normal(), 0.15 * rng.normal()))
        half = float(rng.uniform(18.0, 32.0))
        return centre, direction, half, 0.9 * trunk.r1, True
    candidates = [s for s in tree if s.level in _SEGMENT_LEVELS[level]]
    seg = candidates[int(rng.integers(len(candidates)))]
    t = float(rng.uniform(0.45, 0.95) if seg.level == "trunk" else rng.uniform(0.2, 0.85))
    centre = seg.point(t)
    lumen = seg.radius(t)
    lo, hi = dist.length_mm[EMBOLUS_LEVELS.index(level)]
    half = 0.5 * float(rng.uniform(lo, hi))
    occlusion = float(rng.uniform(*dist.occlusion))
    if occlusion > 0.9:
        # Occlusive: a little wider than the lumen so it fills it; the lumen clips it.
        return centre, seg.direction, half, 1.2 * lumen, False
    # Partial: a mural clot, pushed against the wall.
    u = np.asarray(seg.direction)
    v = rng.normal(size=3)
    v -= (v @ u) * u
    v /= np.linalg.norm(v) or 1.0
    shift = (1.0 - occlusion) * lumen * float(rng.uniform(0.3, 1.0))
    centre = (centre[0] + shift * v[0], centre[1] + shift * v[1], centre[2] + shift * v[2])
    return centre, seg.direction, half, occlusion * lumen, False


def _norm(v: Point) -> Point:
    n = math.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2) or 1.0
    return (v[0] / n, v[1] / n, v[2] / n)


def place_emboli(
    labels: NDArray[np.uint8],
    grid: Grid,
    tree: list[ArterySegment],
    dist: EmbolusDistribution,
    count: int,
    rng: np.random.Generator,
) -> tuple[list[Embolus], NDArray[np.bool_]]:
    """Build ``count`` emboli into the arterial lumen.

    Each embolus is a spheroid along its artery, clipped to the lumen, so the embolus mask
    is always a subset of the arterial mask. Emboli too small to occupy ``min_voxels``
    voxels on this grid are redrawn.

    Parameters
    ----------
    labels : numpy.ndarray
        Label volume with the arteries painted; emboli are written as
        :attr:`Tissue.EMBOLUS`.
    grid : Grid
        Voxel coordinates.
    tree : list of ArterySegment
        The arterial tree the emboli go into.
    dist : EmbolusDistribution
        Sizes and locations to draw from.
    count : int
        How many emboli to place.
    rng : numpy.random.Generator
        Random stream.

    Returns
    -------
    tuple
        The emboli and the boolean mask of all their voxels.
    """
    mask = np.zeros(labels.shape, dtype=bool)
    emboli: list[Embolus] = []
    weights = np.asarray(dist.level_weights, dtype=float)
    weights /= weights.sum()
    for _ in range(count):
        for attempt in range(40):
            level = EMBOLUS_LEVELS[int(rng.choice(len(EMBOLUS_LEVELS), p=weights))]
            centre, direction, half, radius, saddle = _draw_shape(rng, level, tree, dist)
            if attempt >= 20:  # a grid this coarse may miss small clots; grow them
                half, radius = half * 1.5, radius * 1.3
            found = ellipsoid_mask(grid, centre, (half, radius, 0.0), direction)
            if found is None:
                continue
            box, shape = found
            own = shape & _IN_LUMEN[labels[box]]
            n = int(np.count_nonzero(own))
            if n < dist.min_voxels:
                continue
            labels[box][own] = T.EMBOLUS
            mask[box] |= own
            touched = _touching(grid, box, own, tree)
            slices = tuple(int(box[0].start + k) for k in np.nonzero(own.any(axis=(1, 2)))[0])
            emboli.append(
                Embolus(
                    centre=centre,
                    direction=direction,
                    half_length=half,
                    radius=radius,
                    level=level,
                    saddle=saddle,
                    arteries=tuple(s.name for s in touched),
                    central=any(s.level in ("trunk", "main") for s in touched),
                    right=any(s.side == "right" for s in touched),
                    left=any(s.side == "left" for s in touched),
                    voxels=n,
                    slices=slices,
                )
            )
            break
    return emboli, mask
