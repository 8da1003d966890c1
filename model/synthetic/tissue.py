"""Tissue classes of the phantom's label volume."""

from __future__ import annotations

from enum import IntEnum


class Tissue(IntEnum):
    """One label per tissue class; the phantom's ``tissue`` volume holds these values."""

    AIR = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    LUNG = 4
    BONE_CORTICAL = 5
    BONE_MARROW = 6
    CARTILAGE = 7
    CSF = 8
    MEDIASTINAL_FAT = 9
    ABDOMEN = 10
    MYOCARDIUM = 11
    RIGHT_ATRIUM = 12
    RIGHT_VENTRICLE = 13
    LEFT_VENTRICLE = 14
    LEFT_ATRIUM = 15
    AORTA = 16
    SVC = 17
    PULMONARY_ARTERY = 18
    PULMONARY_VEIN = 19
    EMBOLUS = 20
    AIRWAY = 21
    AIRWAY_WALL = 22
    ESOPHAGUS = 23


SOFT_TISSUE_IN_CAVITY = (
    Tissue.LUNG,
    Tissue.MEDIASTINAL_FAT,
    Tissue.ABDOMEN,
)
"""Labels that organs inside the thoracic cavity may paint over."""
