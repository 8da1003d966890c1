"""Chest anatomy of the phantom: body wall, lungs, skeleton, heart, great vessels, airways.

Shapes are analytic (ellipses whose centres and radii vary smoothly down the body,
ellipsoids and tubes along polylines), painted as tissue labels into a ``(s, y, x)``
volume. Positions are in the body frame of :class:`~model.synthetic.shapes.Grid`; most are
fractions of the thoracic cavity's semi-axes, so anatomy scales with the patient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model.synthetic.shapes import (
    Grid,
    Point,
    allowed_lut,
    ellipse_2d,
    ellipsoid_mask,
    paint_ellipse,
    paint_mask,
    tube_mask,
)
from model.synthetic.tissue import Tissue

T = Tissue

# Lung ellipses, as fractions of the cavity: centre x and y, semi-axes; the cavity clips them.
LUNG_X, LUNG_Y, LUNG_A, LUNG_B = 0.55, 0.05, 0.5, 1.15


@dataclass(frozen=True)
class Anatomy:
    """Sampled shape parameters of one patient in one study (millimetres).

    Parameters
    ----------
    body_a, body_b : float
        Lateral and antero-posterior semi-axes of the body at the chest.
    fat : float
        Subcutaneous fat thickness.
    muscle : float
        Chest-wall muscle thickness.
    lung_height : float
        From the lung apices to the deepest posterior costophrenic recess.
    heart_scale : float
        Relative heart size (1.0 is average).
    rv_lv_ratio : float
        Ratio of the right to the left ventricle's largest axial cavity diameter.
    neck : float
        How far above the lung apices the scan starts.
    abdomen : float
        How far below the lung bases the scan ends.
    right_dome, left_dome : float
        Depth ``s`` of the top of each hemidiaphragm.
    vertebra_period, vertebra_phase : float
        Spacing of the intervertebral discs and the depth of one of them.
    jitter : tuple of float
        Small per-study offsets (fractions) applied to vascular landmarks.
    """

    body_a: float
    body_b: float
    fat: float
    muscle: float
    lung_height: float
    heart_scale: float
    rv_lv_ratio: float
    neck: float
    abdomen: float
    right_dome: float
    left_dome: float
    vertebra_period: float
    vertebra_phase: float
    jitter: tuple[float, ...]

    # Derived geometry -------------------------------------------------------------
    @property
    def cavity_a(self) -> float:
        """Lateral semi-axis of the thoracic cavity."""
        return self.body_a - 2.0 - self.fat - self.muscle

    @property
    def cavity_b(self) -> float:
        """Antero-posterior semi-axis of the thoracic cavity."""
        return self.body_b - 2.0 - self.fat - 1.5 * self.muscle

    @property
    def cavity_y(self) -> float:
        """``y`` of the cavity centre (posterior muscles are thicker, so it sits forward)."""
        return -0.25 * self.muscle

    @property
    def carina(self) -> float:
        """Depth of the tracheal carina."""
        return 0.33 * self.lung_height

    @property
    def scan_top(self) -> float:
        """Depth of the first slice."""
        return -self.neck

    @property
    def scan_bottom(self) -> float:
        """Depth of the last slice."""
        return self.lung_height + self.abdomen

    def at(self, fx: float, fy: float, s: float) -> Point:
        """Return a point given as fractions of the cavity's semi-axes and a depth."""
        return (fx * self.cavity_a, self.cavity_y + fy * self.cavity_b, s)


def sample_anatomy(
    patient: np.random.Generator, study: np.random.Generator, rv_lv_ratio: float
) -> Anatomy:
    """Draw a plausible anatomy.

    Parameters
    ----------
    patient : numpy.random.Generator
        Stream for the patient's habitus, shared by all studies of one patient.
    study : numpy.random.Generator
        Stream for what differs between studies (scan range, diaphragm, landmarks).
    rv_lv_ratio : float
        The right-to-left ventricle diameter ratio to build.
    """
    body_a = float(patient.uniform(140.0, 185.0))
    body_b = body_a * float(patient.uniform(0.62, 0.74))
    fat = float(patient.uniform(6.0, 28.0))
    muscle = float(patient.uniform(10.0, 18.0))
    lung_height = float(patient.uniform(215.0, 265.0))
    heart_scale = float(patient.uniform(0.9, 1.12))
    # Breath-hold depth moves the diaphragm between studies.
    right_dome = lung_height - float(study.uniform(35.0, 55.0))
    left_dome = right_dome + float(study.uniform(8.0, 22.0))
    neck = (
        float(study.uniform(45.0, 75.0))
        if study.random() < 0.3
        else float(study.uniform(8.0, 30.0))
    )
    abdomen = float(study.uniform(25.0, 75.0))
    span = lung_height + neck + abdomen
    # At 3 mm, 80 to 160 slices.
    abdomen += max(0.0, 240.0 - span) - max(0.0, span - 477.0)
    period = float(patient.uniform(24.0, 30.0))
    phase = float(study.uniform(0.0, period))
    jitter = tuple(float(v) for v in study.uniform(-1.0, 1.0, size=32))
    return Anatomy(
        body_a=body_a,
        body_b=body_b,
        fat=fat,
        muscle=muscle,
        lung_height=lung_height,
        heart_scale=heart_scale,
        rv_lv_ratio=rv_lv_ratio,
        neck=neck,
        abdomen=abdomen,
        right_dome=right_dome,
        left_dome=left_dome,
        vertebra_period=period,
        vertebra_phase=phase,
        jitter=jitter,
    )


@dataclass(frozen=True)
class Heart:
    """Chamber geometry: centres ``(x, y, s)`` and semi-axes, in millimetres."""

    lv_centre: Point
    lv_axes: Point
    rv_centre: Point
    rv_axes: Point
    ra_centre: Point
    ra_axes: Point
    la_centre: Point
    la_axes: Point

    @property
    def rv_outflow(self) -> Point:
        """Top of the right ventricular outflow tract, where the pulmonary trunk starts."""
        c, ax = self.rv_centre, self.rv_axes
        return (c[0] + 0.45 * ax[0], c[1] - 0.2 * ax[1], c[2] - 0.8 * ax[2])

    @property
    def aortic_root(self) -> Point:
        """Top of the left ventricular outflow tract, where the aorta starts."""
        c, ax = self.lv_centre, self.lv_axes
        return (c[0] - 0.7 * ax[0], c[1] - 0.1 * ax[1], c[2] - 0.85 * ax[2])

    def rv_lv_ratio(self) -> float:
        """Ratio of the largest axial cavity diameters of the two ventricles."""
        return max(self.rv_axes[0], self.rv_axes[1]) / max(self.lv_axes[0], self.lv_axes[1])


def heart_geometry(an: Anatomy) -> Heart:
    """Place the heart on the left hemidiaphragm, with its ventricles as ellipsoids."""
    hs = an.heart_scale
    j = an.jitter
    lv_r = 21.0 * hs
    rv_r = lv_r * an.rv_lv_ratio
    hx, hy, _ = an.at(0.15 + 0.04 * j[0], -0.15 + 0.05 * j[1], 0.0)
    hs_depth = an.left_dome - 40.0 * hs
    lv_centre = (hx + 22.0 * hs, hy + 8.0 * hs, hs_depth)
    # The septum keeps the cavities at least 9 mm apart along the line joining them.
    ux, uy = -0.8, -0.6
    sep = lv_r + rv_r + 9.0
    rv_centre = (lv_centre[0] + ux * sep, lv_centre[1] + uy * sep, hs_depth - 4.0)
    ra_centre = (rv_centre[0] - rv_r - 14.0 * hs, lv_centre[1] + 4.0, hs_depth - 18.0 * hs)
    la_centre = (lv_centre[0] - 18.0 * hs, lv_centre[1] + 34.0 * hs, hs_depth - 34.0 * hs)
    return Heart(
        lv_centre=lv_centre,
        lv_axes=(lv_r, 0.85 * lv_r, 30.0 * hs),
        rv_centre=rv_centre,
        rv_axes=(rv_r, 0.7 * rv_r, 30.0 * hs),
        ra_centre=ra_centre,
        ra_axes=(22.0 * hs, 20.0 * hs, 26.0 * hs),
        la_centre=la_centre,
        la_axes=(28.0 * hs, 15.0 * hs, 18.0 * hs),
    )


def _smoothstep(v: float) -> float:
    v = min(max(v, 0.0), 1.0)
    return v * v * (3.0 - 2.0 * v)


def body_section(an: Anatomy, s: float) -> tuple[float, float, float]:
    """Return the body's semi-axes and centre ``y`` at depth ``s`` (neck to abdomen)."""
    w = _smoothstep((s + 45.0) / 60.0)
    a = 0.4 * an.body_a + 0.6 * an.body_a * w
    b = 0.62 * an.body_b + 0.38 * an.body_b * w
    if s > an.lung_height:
        taper = 1.0 - 0.06 * _smoothstep((s - an.lung_height) / 60.0)
        a *= taper
    return a, b, 0.15 * an.body_b * (1.0 - w)


def _cavity_scale(s: float) -> float:
    return 0.55 + 0.45 * math.sqrt(min(max(s / 60.0, 0.0), 1.0))


def spine_centre(an: Anatomy, s: float) -> tuple[float, float]:
    """Return ``y`` and radius of the vertebral body at depth ``s``."""
    _, b, cy = body_section(an, s)
    w = _smoothstep((s + 45.0) / 60.0)
    thorax = an.cavity_y + 0.86 * an.cavity_b
    neck = cy + 0.3 * b
    radius = 12.0 + 6.0 * min(max((s + 40.0) / (an.lung_height + 120.0), 0.0), 1.0)
    return neck + (thorax - neck) * w, radius


def _paint_slice(labels2d: NDArray[np.uint8], grid: Grid, an: Anatomy, s: float) -> None:
    """Paint the per-slice structures: body wall, cavity, lungs, diaphragm, spine, sternum."""
    a, b, cy = body_section(an, s)
    w = _smoothstep((s + 45.0) / 60.0)
    fat = an.fat * (0.4 + 0.6 * w)
    paint_ellipse(labels2d, grid, 0.0, cy, a, b, T.SKIN)
    paint_ellipse(labels2d, grid, 0.0, cy, a - 2.0, b - 2.0, T.FAT)
    paint_ellipse(labels2d, grid, 0.0, cy, a - 2.0 - fat, b - 2.0 - fat, T.MUSCLE)

    ac, bc, yc = an.cavity_a, an.cavity_b, an.cavity_y
    if s > 0.0:
        k = _cavity_scale(s)
        paint_ellipse(labels2d, grid, 0.0, yc, ac * k, bc * k, T.MEDIASTINAL_FAT, _IN_MUSCLE)
        g = math.sqrt(min(s / 60.0, 1.0))
        for side in (-1.0, 1.0):
            paint_ellipse(
                labels2d,
                grid,
                side * LUNG_X * ac,
                yc + LUNG_Y * bc + 0.3 * bc * (1.0 - g),
                LUNG_A * ac * g,
                LUNG_B * bc * g,
                T.LUNG,
                _IN_CAVITY,
            )
        # Hemidiaphragms: paraboloid domes; below them the cavity holds liver, spleen, stomach.
        for side, dome in ((-1.0, an.right_dome), (1.0, an.left_dome)):
            if s <= dome:
                continue
            rx, ry = side * 0.45 * ac, yc - 0.2 * bc
            reach = math.hypot(0.5 * ac, 1.25 * bc)
            k_dome = (an.lung_height + 8.0 - dome) / (reach * reach)
            r = math.sqrt((s - dome) / k_dome)
            paint_ellipse(labels2d, grid, rx, ry, r, r, T.ABDOMEN, _IN_CAVITY_LUNG)

    _paint_spine(labels2d, grid, an, s)
    _paint_ribs(labels2d, grid, an, s)
    top, bottom = 0.18 * an.lung_height, 0.9 * an.lung_height
    if top <= s <= bottom:
        f = (s - top) / (bottom - top)
        sa = 22.0 - 9.0 * f
        sy = yc - bc * _cavity_scale(s) - 6.0
        paint_ellipse(labels2d, grid, 0.0, sy, sa, 7.0, T.BONE_CORTICAL)
        paint_ellipse(labels2d, grid, 0.0, sy, sa - 2.0, 5.0, T.BONE_MARROW)


def _paint_spine(labels2d: NDArray[np.uint8], grid: Grid, an: Anatomy, s: float) -> None:
    y, r = spine_centre(an, s)
    disc = (s - an.vertebra_phase) % an.vertebra_period < 5.0
    if disc:
        paint_ellipse(labels2d, grid, 0.0, y, r, 0.85 * r, T.CARTILAGE)
    else:
        paint_ellipse(labels2d, grid, 0.0, y, r, 0.85 * r, T.BONE_CORTICAL)
        paint_ellipse(labels2d, grid, 0.0, y, r - 2.5, 0.85 * r - 2.5, T.BONE_MARROW)
    canal = y + 0.85 * r + 7.0
    paint_ellipse(labels2d, grid, 0.0, canal, 11.5, 11.0, T.BONE_CORTICAL)
    for side in (-1.0, 1.0):
        paint_ellipse(labels2d, grid, side * 19.0, canal - 1.0, 12.0, 4.5, T.BONE_CORTICAL)
    paint_ellipse(labels2d, grid, 0.0, canal + 17.0, 3.5, 10.0, T.BONE_CORTICAL)
    paint_ellipse(labels2d, grid, 0.0, canal, 7.0, 6.5, T.CSF)


def _paint_ribs(labels2d: NDArray[np.uint8], grid: Grid, an: Anatomy, s: float) -> None:
    """Paint the cross-sections of ribs and costal cartilages that cross this slice."""
    if not -20.0 <= s <= an.lung_height + 40.0:
        return
    k = _cavity_scale(max(s, 0.0))
    ac, bc, yc = an.cavity_a * k, an.cavity_b * k, an.cavity_y
    outer = ellipse_2d(grid, 0.0, yc, ac + 11.0, bc + 11.0)
    if outer is None:
        return
    (rows, cols), mask = outer
    # Only the band outside the cavity can hold ribs; test the rest no further.
    dy = (grid.y[rows] - yc) / (bc + 0.5)
    inner = (ac + 0.5) * np.sqrt(np.clip(1.0 - dy * dy, 0.0, None))
    mask &= np.abs(grid.x[cols])[None, :] > inner[:, None]
    yy, xx = np.nonzero(mask)
    x = grid.x[cols][xx]
    y = grid.y[rows][yy] - yc
    rho = np.sqrt((x / ac) ** 2 + (y / bc) ** 2)
    depth = (rho - 1.0) * np.sqrt(x * x + y * y) / np.maximum(rho, 1e-6)
    keep = depth >= 0.5
    phi = np.arctan2(np.abs(x), y) / math.pi  # 0 posterior, 1 anterior
    period = (an.lung_height + 5.0) / 11.0
    drop = 0.55 * an.lung_height
    u = (s + 8.0 - drop * phi**1.3) / period
    idx = np.rint(u)
    ds = (u - idx) * period
    valid = keep & (idx >= 0) & (idx <= 11) & (phi > 0.1) & (phi < 0.93)
    q_out = ((depth - 5.0) / 3.5) ** 2 + (ds / 6.0) ** 2
    q_in = ((depth - 5.0) / 1.8) ** 2 + (ds / 4.0) ** 2
    cartilage = phi > 0.8
    crop = labels2d[rows, cols]
    bone = valid & (q_out <= 1.0)
    crop[yy[bone & cartilage], xx[bone & cartilage]] = T.CARTILAGE
    rib = bone & ~cartilage
    crop[yy[rib], xx[rib]] = T.BONE_CORTICAL
    marrow = rib & (q_in <= 1.0)
    crop[yy[marrow], xx[marrow]] = T.BONE_MARROW


_IN_MUSCLE = allowed_lut([T.MUSCLE])
_IN_CAVITY = allowed_lut([T.MEDIASTINAL_FAT])
_IN_CAVITY_LUNG = allowed_lut([T.MEDIASTINAL_FAT, T.LUNG])
_SOFT = allowed_lut([T.LUNG, T.MEDIASTINAL_FAT, T.ABDOMEN])
_HEART_WALL = allowed_lut([T.LUNG, T.MEDIASTINAL_FAT, T.ABDOMEN, T.MYOCARDIUM])
_VESSEL = allowed_lut(
    [T.LUNG, T.MEDIASTINAL_FAT, T.ABDOMEN, T.MYOCARDIUM, T.MUSCLE, T.FAT, T.ESOPHAGUS]
)
_AIRWAY_WALL = allowed_lut([T.LUNG, T.MEDIASTINAL_FAT, T.MUSCLE, T.FAT, T.ESOPHAGUS])


def polyline(
    labels: NDArray[np.uint8],
    grid: Grid,
    points: list[Point],
    radii: list[float],
    label: int,
    allowed: NDArray[np.bool_] | None = None,
    record: NDArray[np.bool_] | None = None,
) -> int:
    """Paint a tube along a polyline with a radius given at each point."""
    n = 0
    for p0, p1, r0, r1 in zip(points[:-1], points[1:], radii[:-1], radii[1:], strict=True):
        n += paint_mask(labels, tube_mask(grid, p0, p1, r0, r1), label, allowed, record)
    return n


def great_vessel_paths(an: Anatomy, heart: Heart) -> dict[str, list[Point]]:
    """Centrelines of the aorta, superior vena cava, trachea and main bronchi, and oesophagus."""
    L, c = an.lung_height, an.carina
    j = an.jitter
    return {
        "aorta": [
            heart.aortic_root,
            an.at(-0.1 + 0.03 * j[2], -0.32, c - 0.02 * L),
            an.at(-0.05, -0.38, c - 0.17 * L),
            an.at(0.15, -0.2, c - 0.21 * L),
            an.at(0.3, 0.2, c - 0.17 * L),
            an.at(0.24, 0.55, c - 0.05 * L),
            an.at(0.22 + 0.03 * j[3], 0.62, c + 0.25 * L),
            an.at(0.1, 0.55, an.scan_bottom + 20.0),
        ],
        "svc": [
            an.at(-0.24, -0.15, an.scan_top - 10.0),
            an.at(-0.24 + 0.03 * j[4], -0.2, c),
            heart.ra_centre,
        ],
        "trachea": [
            an.at(0.0, -0.35, an.scan_top - 10.0),
            an.at(0.0, -0.05, 0.1 * L),
            an.at(0.0, 0.25, c),
        ],
        "right_bronchus": [an.at(0.0, 0.25, c), an.at(-0.38, 0.32, c + 0.09 * L)],
        "left_bronchus": [an.at(0.0, 0.25, c), an.at(0.38, 0.36, c + 0.13 * L)],
        "oesophagus": [
            an.at(0.03, -0.2, an.scan_top - 10.0),
            an.at(0.05, 0.52, c),
            an.at(0.1, 0.45, an.lung_height),
            an.at(0.2, 0.2, an.scan_bottom + 20.0),
        ],
    }


def paint_anatomy(grid: Grid, an: Anatomy, heart: Heart) -> NDArray[np.uint8]:
    """Build the label volume of everything except the pulmonary vessels and emboli.

    Parameters
    ----------
    grid : Grid
        Voxel coordinates.
    an : Anatomy
        Shape parameters.
    heart : Heart
        Chamber geometry from :func:`heart_geometry`.

    Returns
    -------
    numpy.ndarray
        ``uint8`` labels of shape ``grid.shape`` with values from :class:`Tissue`.
    """
    labels = np.zeros(grid.shape, dtype=np.uint8)
    for k, s in enumerate(grid.s):
        _paint_slice(labels[k], grid, an, float(s))

    chambers = (
        (heart.la_centre, heart.la_axes, 3.0, T.LEFT_ATRIUM),
        (heart.ra_centre, heart.ra_axes, 3.0, T.RIGHT_ATRIUM),
        (heart.lv_centre, heart.lv_axes, 10.0, T.LEFT_VENTRICLE),
        (heart.rv_centre, heart.rv_axes, 4.0, T.RIGHT_VENTRICLE),
    )
    # The chambers sit in one muscular mass: an ellipsoid inscribed in their bounding box.
    lo = np.min([np.subtract(c, ax) for c, ax, _, _ in chambers], axis=0)
    hi = np.max([np.add(c, ax) for c, ax, _, _ in chambers], axis=0)
    mid = tuple(float(v) for v in 0.5 * (lo + hi))
    half = tuple(float(v) for v in 0.5 * (hi - lo))
    mass = ellipsoid_mask(grid, (mid[0], mid[1], mid[2]), (half[0], half[1], 0.9 * half[2]))
    fat = ellipsoid_mask(grid, (mid[0], mid[1], mid[2]), (half[0] + 8, half[1] + 8, half[2]))
    paint_mask(labels, fat, T.MEDIASTINAL_FAT, allowed_lut([T.LUNG, T.MEDIASTINAL_FAT]))
    paint_mask(labels, mass, T.MYOCARDIUM, _HEART_WALL)
    # Epicardial fat, then each chamber's wall.
    for extra, label, allowed in (
        (10.0, T.MEDIASTINAL_FAT, allowed_lut([T.LUNG, T.MEDIASTINAL_FAT])),
        (0.0, T.MYOCARDIUM, _HEART_WALL),
    ):
        for centre, axes, wall, _ in chambers:
            outer = (axes[0] + wall + extra, axes[1] + wall + extra, axes[2] + wall + extra)
            paint_mask(labels, ellipsoid_mask(grid, centre, outer), label, allowed)
    for centre, axes, _, label in chambers:
        paint_mask(labels, ellipsoid_mask(grid, centre, axes), label, _HEART_WALL)

    paths = great_vessel_paths(an, heart)
    polyline(labels, grid, paths["oesophagus"], [7.0] * 4, T.ESOPHAGUS, _VESSEL)
    polyline(
        labels,
        grid,
        paths["aorta"],
        [13.0, 15.0, 14.0, 13.0, 12.0, 12.0, 11.5, 10.5],
        T.AORTA,
        allowed_lut([*_VESSEL.nonzero()[0], T.LEFT_VENTRICLE]),
    )
    polyline(
        labels,
        grid,
        paths["svc"],
        [8.0, 9.0, 10.0],
        T.SVC,
        allowed_lut([*_VESSEL.nonzero()[0], T.RIGHT_ATRIUM]),
    )
    airway = allowed_lut([T.AIRWAY_WALL])
    for name, r in (("trachea", 10.0), ("right_bronchus", 7.0), ("left_bronchus", 6.0)):
        pts = paths[name]
        polyline(labels, grid, pts, [r] * len(pts), T.AIRWAY_WALL, _AIRWAY_WALL)
        polyline(labels, grid, pts, [r - 2.0] * len(pts), T.AIRWAY, airway)
    return labels


def lung_contains(an: Anatomy, p: Point) -> bool:
    """Whether a point lies inside a lung (analytically, ignoring vessels and heart)."""
    x, y, s = p
    if s <= 5.0 or s >= an.lung_height:
        return False
    ac, bc, yc = an.cavity_a, an.cavity_b, an.cavity_y
    k = _cavity_scale(s)
    if (x / (ac * k)) ** 2 + ((y - yc) / (bc * k)) ** 2 > 0.9:
        return False
    g = math.sqrt(min(s / 60.0, 1.0))
    side = 1.0 if x > 0 else -1.0
    cx, cy = side * LUNG_X * ac, yc + LUNG_Y * bc + 0.3 * bc * (1.0 - g)
    if ((x - cx) / (LUNG_A * ac * g)) ** 2 + ((y - cy) / (LUNG_B * bc * g)) ** 2 > 0.75:
        return False
    dome = an.right_dome if side < 0 else an.left_dome
    if s > dome:
        rx, ry = side * 0.45 * ac, yc - 0.2 * bc
        reach = math.hypot(0.5 * ac, 1.25 * bc)
        k_dome = (an.lung_height + 8.0 - dome) / (reach * reach)
        if math.hypot(x - rx, y - ry) < math.sqrt((s - dome) / k_dome) + 5.0:
            return False
    return True
