"""A synthetic CT pulmonary angiogram with known emboli and its weak labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from model.synthetic.anatomy import (
    Anatomy,
    Heart,
    great_vessel_paths,
    heart_geometry,
    paint_anatomy,
    sample_anatomy,
)
from model.synthetic.arteries import ArterySegment, build_artery_tree, paint_arteries, paint_veins
from model.synthetic.difficulty import Difficulty, get_difficulty
from model.synthetic.emboli import Embolus, EmbolusDistribution, place_emboli
from model.synthetic.labels import ExamLabels, exam_labels
from model.synthetic.scanner import Contrast, render, sample_contrast
from model.synthetic.shapes import Grid


@dataclass(frozen=True)
class StudyParams:
    """What to generate; everything not given here is drawn from the seed.

    Parameters
    ----------
    positive : bool or None
        Whether the study has emboli; None draws it (one in two).
    difficulty : str or Difficulty
        ``"easy"``, ``"realistic"`` or ``"hard"``, or a custom :class:`Difficulty`.
    slice_thickness : float
        Slice thickness and spacing in millimetres.
    n_slices : int or None
        Force the slice count; the same anatomy is then sampled more coarsely or finely,
        and the slice thickness becomes the resulting spacing. None gives 80 to 160 slices
        at 3 mm.
    matrix : int
        Rows and columns; below 512 the pixels grow so the field of view is unchanged.
    patient_seed : int or None
        Seed of the patient's habitus (body, lungs, heart), so that two studies of one
        patient look alike. None uses ``seed``.
    n_emboli : int or None
        Force the number of emboli in a positive study.
    streaks : bool or None
        Force streak artefacts from the superior vena cava on or off.
    """

    positive: bool | None = None
    difficulty: str | Difficulty = "realistic"
    slice_thickness: float = 3.0
    n_slices: int | None = None
    matrix: int = 512
    patient_seed: int | None = None
    n_emboli: int | None = None
    streaks: bool | None = None

    def __post_init__(self) -> None:
        get_difficulty(self.difficulty)
        if not 0.5 <= self.slice_thickness <= 10.0:
            raise ValueError("slice_thickness must be between 0.5 and 10 mm.")
        if self.n_slices is not None and not 4 <= self.n_slices <= 2000:
            raise ValueError("n_slices must be between 4 and 2000.")
        if not 32 <= self.matrix <= 1024:
            raise ValueError("matrix must be between 32 and 1024 pixels.")
        if self.n_emboli is not None and self.n_emboli < 1:
            raise ValueError("n_emboli must be at least 1; ask for a negative study instead.")


@dataclass(frozen=True)
class Geometry:
    """Where the volume lies in the patient coordinate system (DICOM LPS, millimetres).

    Parameters
    ----------
    rows, columns : int
        Image matrix.
    pixel_spacing : float
        Square pixel size in millimetres.
    slice_thickness : float
        Nominal slice thickness, equal to the slice spacing.
    slice_z : tuple of float
        Patient ``z`` of each slice, head to foot (decreasing).
    origin : tuple of float
        Patient ``(x, y)`` of the centre of the first (top left) pixel.
    """

    rows: int
    columns: int
    pixel_spacing: float
    slice_thickness: float
    slice_z: tuple[float, ...]
    origin: tuple[float, float]

    def image_position(self, k: int) -> tuple[float, float, float]:
        """Return ImagePositionPatient of slice ``k`` (head to foot order)."""
        return (self.origin[0], self.origin[1], self.slice_z[k])


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic CTPA series, with the ground truth it was built from.

    Volumes are indexed ``(slice, row, column)``; slice 0 is the most cranial. Columns run
    towards the patient's left and rows towards the back, as in a standard axial CT.

    Parameters
    ----------
    seed : int
        The seed it was generated from.
    params : StudyParams
        What was asked for.
    hu : numpy.ndarray
        ``int16`` image in Hounsfield units, within ``[-1024, 3071]``.
    tissue : numpy.ndarray
        ``uint8`` tissue labels (:class:`~model.synthetic.tissue.Tissue`), noiseless.
    artery_mask : numpy.ndarray
        Voxels of pulmonary arterial lumen (including the emboli in it).
    embolus_mask : numpy.ndarray
        Voxels occupied by emboli; always a subset of ``artery_mask``.
    emboli : tuple of Embolus
        Each embolus, with its location, size, sides and slices.
    slice_labels : numpy.ndarray
        Boolean per slice: any embolus voxel on the slice (the weak slice label).
    exam : ExamLabels
        RSNA exam labels.
    rv_lv_ratio : float
        Right-to-left ventricular diameter ratio built into the heart.
    geometry : Geometry
        Patient coordinates of the volume.
    grid : Grid
        Body-frame coordinates of the volume.
    anatomy : Anatomy
        Shape parameters.
    heart : Heart
        Heart chamber geometry.
    arteries : tuple of ArterySegment
        The pulmonary arterial tree.
    contrast : Contrast
        Bolus, dose and blur.
    """

    seed: int
    params: StudyParams
    hu: NDArray[np.int16] = field(repr=False)
    tissue: NDArray[np.uint8] = field(repr=False)
    artery_mask: NDArray[np.bool_] = field(repr=False)
    embolus_mask: NDArray[np.bool_] = field(repr=False)
    emboli: tuple[Embolus, ...]
    slice_labels: NDArray[np.bool_] = field(repr=False)
    exam: ExamLabels
    rv_lv_ratio: float
    geometry: Geometry
    grid: Grid = field(repr=False)
    anatomy: Anatomy = field(repr=False)
    heart: Heart = field(repr=False)
    arteries: tuple[ArterySegment, ...] = field(repr=False)
    contrast: Contrast

    @property
    def positive(self) -> bool:
        """Whether any slice is positive (the weak study label)."""
        return bool(self.slice_labels.any())

    @property
    def n_slices(self) -> int:
        """Number of slices."""
        return int(self.hu.shape[0])

    def embolus_distance_mm(self) -> NDArray[np.float64]:
        """Distance in mm from each voxel to the nearest embolus voxel (0 inside one).

        3-D, with the slice spacing along the slices: what a heat map's peak is measured
        against (``benchmarks/heatmap_localisation.py``). Infinite everywhere when there
        is no embolus.
        """
        if not self.embolus_mask.any():
            return np.full(self.embolus_mask.shape, np.inf)
        spacing = self.geometry.pixel_spacing
        return np.asarray(
            ndimage.distance_transform_edt(
                ~self.embolus_mask,
                sampling=(self.geometry.slice_thickness, spacing, spacing),
            ),
            dtype=np.float64,
        )


_STREAMS = ("decide", "anatomy", "geometry", "tree", "emboli", "contrast", "noise", "veins")


def _rngs(seed: int, patient_seed: int | None) -> dict[str, np.random.Generator]:
    """Independent random streams, so that changing one setting does not reshuffle the rest."""
    if seed < 0:
        raise ValueError("seed must be a non-negative integer.")
    streams = {
        name: np.random.default_rng(np.random.SeedSequence([seed, i]))
        for i, name in enumerate(_STREAMS)
    }
    base = seed if patient_seed is None else patient_seed
    streams["patient"] = np.random.default_rng(np.random.SeedSequence([base, 1000]))
    return streams


_FALLBACK = EmbolusDistribution(
    level_weights=(1.0, 0.0, 0.0, 0.0),
    count_weights=(1.0,),
    length_mm=((40.0, 60.0),) * 4,
    occlusion=(1.0, 1.0),
    saddle_fraction=0.5,
    min_voxels=1,
)


def _draw_count(rng: np.random.Generator, dist: EmbolusDistribution) -> int:
    w = np.asarray(dist.count_weights, dtype=float)
    return 1 + int(rng.choice(len(w), p=w / w.sum()))


def generate_study(seed: int, params: StudyParams | None = None) -> Phantom:
    """Generate one synthetic CTPA series and its ground truth.

    The same seed and parameters always give the same phantom, bit for bit. The anatomy
    does not depend on ``slice_thickness``, ``n_slices`` or ``matrix``, so a thin
    reconstruction of a study is the same seed with ``slice_thickness=1.0``.

    Parameters
    ----------
    seed : int
        Non-negative seed.
    params : StudyParams, optional
        What to generate; defaults to ``StudyParams()``.

    Returns
    -------
    Phantom
        The image, the masks, the emboli and the weak labels.

    Examples
    --------
    >>> p = generate_study(7, StudyParams(positive=True, n_slices=40, matrix=128))
    >>> p.positive, p.hu.shape
    (True, (40, 128, 128))
    """
    params = params or StudyParams()
    difficulty = get_difficulty(params.difficulty)
    rngs = _rngs(seed, params.patient_seed)
    decide = rngs["decide"]
    positive = bool(decide.random() < 0.5) if params.positive is None else params.positive
    count = _draw_count(decide, difficulty.emboli)
    if params.n_emboli is not None:
        count = params.n_emboli
    dilated = decide.random() < difficulty.rv_dilation[int(positive)]
    ratio = float(decide.uniform(1.05, 1.45) if dilated else decide.uniform(0.65, 0.95))

    anatomy = sample_anatomy(rngs["patient"], rngs["anatomy"], ratio)
    grid, geometry = _geometry(anatomy, params, rngs["geometry"])
    heart = heart_geometry(anatomy)
    labels = paint_anatomy(grid, anatomy, heart)
    tree = build_artery_tree(anatomy, heart, rngs["tree"])
    artery_mask = paint_arteries(labels, grid, tree)
    paint_veins(labels, grid, anatomy, heart, rngs["veins"])

    emboli: list[Embolus] = []
    embolus_mask = np.zeros(labels.shape, dtype=bool)
    if positive:
        emboli, embolus_mask = place_emboli(
            labels, grid, tree, difficulty.emboli, count, rngs["emboli"]
        )
        if not emboli:
            # A coarse grid can miss every small clot; a positive study still needs one.
            emboli, embolus_mask = place_emboli(labels, grid, tree, _FALLBACK, 1, rngs["emboli"])
        if not emboli:
            raise RuntimeError(
                f"Could not fit an embolus into study {seed}; use more slices or a larger matrix."
            )

    contrast = sample_contrast(
        rngs["contrast"], difficulty.pa_hu, difficulty.noise_sd, params.streaks
    )
    lung_gradient = (anatomy.cavity_y, 45.0 / anatomy.cavity_b)
    svc_path = great_vessel_paths(anatomy, heart)["svc"]
    hu = render(labels, grid, contrast, rngs["noise"], lung_gradient, svc_path)
    slice_labels: NDArray[np.bool_] = np.asarray(embolus_mask.any(axis=(1, 2)))
    return Phantom(
        seed=seed,
        params=params,
        hu=hu,
        tissue=labels,
        artery_mask=artery_mask,
        embolus_mask=embolus_mask,
        emboli=tuple(emboli),
        slice_labels=slice_labels,
        exam=exam_labels(emboli, heart.rv_lv_ratio()),
        rv_lv_ratio=heart.rv_lv_ratio(),
        geometry=geometry,
        grid=grid,
        anatomy=anatomy,
        heart=heart,
        arteries=tuple(tree),
        contrast=contrast,
    )


def _geometry(an: Anatomy, params: StudyParams, rng: np.random.Generator) -> tuple[Grid, Geometry]:
    """Choose the field of view, table position and slices for a study."""
    width = 2.0 * an.body_a + float(rng.uniform(30.0, 80.0))
    spacing512 = float(np.clip(width / 512.0, 0.6, 0.9))
    # Body-centre offset from the reconstruction centre, kept inside the field of view.
    fov = spacing512 * 512.0
    slack = max(0.0, 0.5 * (fov - 2.0 * an.body_a) - 5.0)
    dx = float(rng.uniform(-1.0, 1.0)) * min(20.0, slack)
    dy = float(rng.uniform(-10.0, 30.0))
    z_apex = float(rng.uniform(-200.0, 50.0))

    top, bottom = an.scan_top, an.scan_bottom
    if params.n_slices is None:
        thickness = params.slice_thickness
        n = round((bottom - top) / thickness) + 1
    else:
        n = params.n_slices
        thickness = (bottom - top) / (n - 1)
    thickness = round(thickness, 4)
    m = params.matrix
    pixel = round(spacing512 * 512.0 / m, 6)
    half = 0.5 * (m - 1) * pixel
    s = top + thickness * np.arange(n)
    grid = Grid(
        x=(np.arange(m) * pixel - half - dx).astype(np.float32),
        y=(np.arange(m) * pixel - half - dy).astype(np.float32),
        s=s.astype(np.float32),
    )
    geometry = Geometry(
        rows=m,
        columns=m,
        pixel_spacing=pixel,
        slice_thickness=thickness,
        slice_z=tuple(round(z_apex - float(v), 4) for v in s),
        origin=(round(-half, 4), round(-half, 4)),
    )
    return grid, geometry
