"""The pulmonary arterial tree and the pulmonary veins, as tapered tubes along centrelines."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model.synthetic.anatomy import Anatomy, Heart, lung_contains
from model.synthetic.shapes import Grid, Point, allowed_lut, paint_mask, tube_mask
from model.synthetic.tissue import Tissue

T = Tissue

LEVELS = ("trunk", "main", "lobar", "segmental", "subsegmental", "distal")
"""Branching levels of :class:`ArterySegment`, from the pulmonary trunk outwards."""


@dataclass(frozen=True)
class ArterySegment:
    """One straight, tapered piece of a pulmonary artery.

    Parameters
    ----------
    name : str
        Dotted path, for example ``"rll.s2.b1"`` (right lower lobe, second segmental branch,
        its first subsegmental branch).
    side : str
        ``"central"`` for the trunk, else ``"right"`` or ``"left"``.
    level : str
        One of :data:`LEVELS`.
    p0, p1 : Point
        Proximal and distal ends ``(x, y, s)`` in millimetres.
    r0, r1 : float
        Lumen radius at each end in millimetres.
    """

    name: str
    side: str
    level: str
    p0: Point
    p1: Point
    r0: float
    r1: float

    def point(self, t: float) -> Point:
        """Return the centreline point at fraction ``t`` from ``p0``."""
        return (
            self.p0[0] + t * (self.p1[0] - self.p0[0]),
            self.p0[1] + t * (self.p1[1] - self.p0[1]),
            self.p0[2] + t * (self.p1[2] - self.p0[2]),
        )

    def radius(self, t: float) -> float:
        """Return the lumen radius at fraction ``t`` from ``p0``."""
        return self.r0 + t * (self.r1 - self.r0)

    @property
    def direction(self) -> Point:
        """Unit vector from ``p0`` to ``p1``."""
        return _unit(np.subtract(self.p1, self.p0))

    @property
    def length(self) -> float:
        """Length in millimetres."""
        return float(np.linalg.norm(np.subtract(self.p1, self.p0)))


def _unit(v: NDArray[np.float64]) -> Point:
    n = float(np.linalg.norm(v)) or 1.0
    return (float(v[0] / n), float(v[1] / n), float(v[2] / n))


def _deviate(rng: np.random.Generator, u: Point, angle_deg: float) -> Point:
    """Return a unit vector at ``angle_deg`` from ``u`` in a random direction."""
    v = rng.normal(size=3)
    uu = np.asarray(u)
    v -= (v @ uu) * uu
    v /= np.linalg.norm(v) or 1.0
    a = math.radians(angle_deg)
    return _unit(math.cos(a) * uu + math.sin(a) * v)


def _branch(
    rng: np.random.Generator,
    an: Anatomy,
    start: Point,
    towards: Point,
    angle: tuple[float, float],
    length: tuple[float, float],
) -> Point:
    """Pick an end point for a branch that stays inside the lung."""
    end = start
    for attempt in range(8):
        d = _deviate(rng, towards, float(rng.uniform(*angle)))
        n = float(rng.uniform(*length)) * (1.0 - 0.08 * attempt)
        end = (start[0] + n * d[0], start[1] + n * d[1], start[2] + n * d[2])
        if lung_contains(an, end):
            return end
    return (
        start[0] + 0.4 * (end[0] - start[0]),
        start[1] + 0.4 * (end[1] - start[1]),
        start[2] + 0.4 * (end[2] - start[2]),
    )


def build_artery_tree(an: Anatomy, heart: Heart, rng: np.random.Generator) -> list[ArterySegment]:
    """Lay out the pulmonary trunk, main, lobar, segmental and smaller arteries.

    Parameters
    ----------
    an : Anatomy
        The patient's shape; landmarks scale with the thoracic cavity.
    heart : Heart
        The trunk starts at the right ventricular outflow tract.
    rng : numpy.random.Generator
        Stream for branch directions and lengths.

    Returns
    -------
    list of ArterySegment
        Parents come before their children.
    """
    L, c = an.lung_height, an.carina
    j = an.jitter
    dilated = 1.0 + 0.25 * max(0.0, an.rv_lv_ratio - 1.0)
    trunk_r = 13.5 * dilated
    bif = an.at(0.06 + 0.02 * j[8], -0.05 + 0.04 * j[9], c + 0.06 * L)
    r1 = an.at(-0.2, 0.02, c + 0.08 * L)
    rh = an.at(-0.42 + 0.03 * j[10], 0.12 + 0.04 * j[11], c + 0.1 * L)
    l1 = an.at(0.24, 0.0, c + 0.0 * L)
    lh = an.at(0.42 + 0.03 * j[12], 0.3 + 0.04 * j[13], c + 0.06 * L)
    segs = [
        ArterySegment("trunk", "central", "trunk", heart.rv_outflow, bif, trunk_r, trunk_r),
        ArterySegment("rpa", "right", "main", bif, r1, 10.5 * dilated, 10.0),
        ArterySegment("rpa.2", "right", "main", r1, rh, 10.0, 8.5),
        ArterySegment("lpa", "left", "main", bif, l1, 10.0 * dilated, 9.5),
        ArterySegment("lpa.2", "left", "main", l1, lh, 9.5, 8.0),
    ]
    lobes = (
        ("rul", "right", r1, (-0.62, -0.05, c - 0.25 * L), 6.0, 3),
        ("rml", "right", rh, (-0.55, -0.6, c + 0.25 * L), 4.5, 2),
        ("rll", "right", rh, (-0.55, 0.55, c + 0.52 * L), 6.5, 4),
        ("lul", "left", lh, (0.62, -0.05, c - 0.25 * L), 5.5, 3),
        ("lin", "left", lh, (0.62, -0.55, c + 0.25 * L), 4.0, 2),
        ("lll", "left", lh, (0.55, 0.55, c + 0.52 * L), 6.5, 4),
    )
    for i, (name, side, start, target, radius, n_seg) in enumerate(lobes):
        end = an.at(target[0] + 0.05 * j[14 + i], target[1] + 0.06 * j[20 + i], target[2])
        lobar = ArterySegment(name, side, "lobar", start, end, radius, 0.7 * radius)
        segs.append(lobar)
        for k in range(n_seg):
            t = float(rng.uniform(0.35, 1.0))
            base = lobar.point(t)
            rs = min(4.0, 0.72 * lobar.radius(t))
            seg_end = _branch(rng, an, base, lobar.direction, (25.0, 60.0), (25.0, 50.0))
            seg = ArterySegment(f"{name}.s{k + 1}", side, "segmental", base, seg_end, rs, 0.6 * rs)
            segs.append(seg)
            for m in range(2):
                sub_end = _branch(rng, an, seg_end, seg.direction, (20.0, 45.0), (12.0, 25.0))
                r = 0.85 * seg.r1
                sub = ArterySegment(
                    f"{seg.name}.b{m + 1}", side, "subsegmental", seg_end, sub_end, r, 0.6 * r
                )
                segs.append(sub)
                for q in range(2):
                    tip = _branch(rng, an, sub_end, sub.direction, (20.0, 50.0), (8.0, 18.0))
                    rd = max(0.45, 0.85 * sub.r1)
                    segs.append(
                        ArterySegment(
                            f"{sub.name}.d{q + 1}", side, "distal", sub_end, tip, rd, 0.6 * rd
                        )
                    )
    return segs


_ARTERY_ALLOWED = allowed_lut(
    [T.LUNG, T.MEDIASTINAL_FAT, T.PULMONARY_ARTERY, T.RIGHT_VENTRICLE, T.MYOCARDIUM]
)
_VEIN_ALLOWED = allowed_lut([T.LUNG, T.MEDIASTINAL_FAT, T.LEFT_ATRIUM, T.MYOCARDIUM])


def paint_arteries(
    labels: NDArray[np.uint8], grid: Grid, tree: list[ArterySegment]
) -> NDArray[np.bool_]:
    """Paint the arterial lumen as :attr:`Tissue.PULMONARY_ARTERY` and return its mask."""
    mask = np.zeros(labels.shape, dtype=bool)
    for seg in tree:
        found = tube_mask(grid, seg.p0, seg.p1, seg.r0, seg.r1)
        paint_mask(labels, found, T.PULMONARY_ARTERY, _ARTERY_ALLOWED, mask)
    return mask


def paint_veins(
    labels: NDArray[np.uint8], grid: Grid, an: Anatomy, heart: Heart, rng: np.random.Generator
) -> None:
    """Paint four pulmonary veins and their branches draining into the left atrium."""
    L, c = an.lung_height, an.carina
    la = heart.la_centre
    targets = (
        an.at(-0.5, -0.2, c + 0.12 * L),
        an.at(-0.5, 0.35, c + 0.4 * L),
        an.at(0.5, -0.15, c + 0.12 * L),
        an.at(0.5, 0.35, c + 0.4 * L),
    )
    for target in targets:
        trunk = ArterySegment("vein", "", "", la, target, 6.0, 4.5)
        paint_mask(labels, tube_mask(grid, la, target, 6.0, 4.5), T.PULMONARY_VEIN, _VEIN_ALLOWED)
        for _ in range(3):
            end = _branch(rng, an, target, trunk.direction, (25.0, 60.0), (20.0, 40.0))
            paint_mask(
                labels, tube_mask(grid, target, end, 3.0, 1.8), T.PULMONARY_VEIN, _VEIN_ALLOWED
            )
            d = _unit(np.subtract(end, target))
            for _ in range(2):
                tip = _branch(rng, an, end, d, (20.0, 50.0), (10.0, 20.0))
                paint_mask(
                    labels, tube_mask(grid, end, tip, 1.5, 0.8), T.PULMONARY_VEIN, _VEIN_ALLOWED
                )
    # Peripheral vessels too small to name: they give the lungs their texture.
    span = (an.cavity_a, an.cavity_b, an.lung_height)
    painted = 0
    for _ in range(400):
        if painted >= 140:
            break
        u = rng.uniform(-1.0, 1.0, size=2)
        p = (
            float(u[0] * span[0]),
            an.cavity_y + float(u[1] * span[1]),
            float(rng.uniform(10.0, span[2])),
        )
        if not lung_contains(an, p):
            continue
        d = _deviate(rng, _unit(np.array([p[0], p[1] - an.cavity_y, 0.3 * rng.normal()])), 35.0)
        n = float(rng.uniform(8.0, 22.0))
        q = (p[0] + n * d[0], p[1] + n * d[1], p[2] + n * d[2])
        r = float(rng.uniform(0.7, 1.4))
        paint_mask(labels, tube_mask(grid, p, q, r, 0.6 * r), T.PULMONARY_VEIN, _VEIN_ALLOWED)
        painted += 1
