"""Difficulty presets: embolus sizes and locations, contrast bolus and dose."""

from __future__ import annotations

from dataclasses import dataclass

from model.synthetic.emboli import EmbolusDistribution


@dataclass(frozen=True)
class Difficulty:
    """How hard the studies are to read.

    Parameters
    ----------
    name : str
        Preset name.
    emboli : EmbolusDistribution
        Embolus count, level and size distribution of positive studies.
    pa_hu : tuple of float
        Range of pulmonary arterial enhancement in HU (the bolus).
    noise_sd : tuple of float
        Range of quantum noise, as the standard deviation in HU in uniform tissue (the dose).
    rv_dilation : tuple of float
        Probability of a right ventricle larger than the left, in negative studies and in
        positive studies.
    """

    name: str
    emboli: EmbolusDistribution
    pa_hu: tuple[float, float]
    noise_sd: tuple[float, float]
    rv_dilation: tuple[float, float] = (0.08, 0.45)


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty(
        name="easy",
        emboli=EmbolusDistribution(
            level_weights=(0.5, 0.4, 0.1, 0.0),
            count_weights=(0.2, 0.3, 0.3, 0.2),
            length_mm=((25.0, 60.0), (15.0, 40.0), (10.0, 25.0), (6.0, 12.0)),
            occlusion=(0.7, 1.0),
            saddle_fraction=0.3,
            min_voxels=60,
        ),
        pa_hu=(350.0, 500.0),
        noise_sd=(6.0, 12.0),
    ),
    "realistic": Difficulty(
        name="realistic",
        emboli=EmbolusDistribution(
            level_weights=(0.15, 0.3, 0.45, 0.1),
            count_weights=(0.4, 0.3, 0.2, 0.1),
            length_mm=((15.0, 50.0), (10.0, 30.0), (5.0, 18.0), (4.0, 10.0)),
            occlusion=(0.4, 1.0),
            saddle_fraction=0.3,
            min_voxels=8,
        ),
        pa_hu=(250.0, 500.0),
        noise_sd=(8.0, 22.0),
    ),
    "hard": Difficulty(
        name="hard",
        emboli=EmbolusDistribution(
            level_weights=(0.03, 0.17, 0.5, 0.3),
            count_weights=(0.7, 0.3),
            length_mm=((10.0, 30.0), (6.0, 16.0), (4.0, 10.0), (3.0, 7.0)),
            occlusion=(0.3, 0.85),
            saddle_fraction=0.2,
            min_voxels=4,
        ),
        pa_hu=(250.0, 350.0),
        noise_sd=(15.0, 30.0),
    ),
}
"""The presets by name: ``easy``, ``realistic`` (the default) and ``hard``."""


def get_difficulty(name: str | Difficulty) -> Difficulty:
    """Return a preset by name, or a :class:`Difficulty` unchanged.

    Raises
    ------
    ValueError
        If the name is not a preset.
    """
    if isinstance(name, Difficulty):
        return name
    try:
        return DIFFICULTIES[name]
    except KeyError:
        raise ValueError(
            f"Unknown difficulty {name!r}; choose one of {', '.join(DIFFICULTIES)}."
        ) from None
