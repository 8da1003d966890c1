"""Selection rules: is a complete series an axial CTPA the model should analyse?

A series that fails gets a reason a PACS admin can read in ``triage status``.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence

from triage.config import SelectionConfig
from triage.db.models import Instance, Series

# |z| of the slice normal above which a series counts as axial (about 18 degrees of tilt).
_AXIAL_MIN_NORMAL_Z = 0.95


def _slice_normal_z(orientation: str) -> float | None:
    try:
        r = [float(v) for v in orientation.split("\\")]
    except ValueError:
        return None
    if len(r) != 6:
        return None
    # z component of row × column direction cosines.
    return abs(r[0] * r[4] - r[1] * r[3])


def skip_reason(series: Series, instances: Sequence[Instance], cfg: SelectionConfig) -> str | None:
    """Why ``series`` should not be analysed, or None if it passes every rule."""
    present = [i for i in instances if not i.missing]
    modality = series.modality or (present[0].modality if present else None)
    if modality not in cfg.modalities:
        return f"modality {modality or 'unknown'} is not one of {', '.join(cfg.modalities)}"

    if not present:
        return "no instance of the series is on disk"

    image_types = [(i.image_type or "").upper().split("\\") for i in present]
    if cfg.require_original and any(t[0] != "ORIGINAL" for t in image_types):
        return "image type is not ORIGINAL (derived or secondary images)"
    if cfg.require_axial:
        if any(len(t) > 2 and t[2] not in ("AXIAL", "") for t in image_types):
            kinds = sorted({t[2] for t in image_types if len(t) > 2 and t[2] != "AXIAL"})
            return f"image type is {'/'.join(kinds)}, not AXIAL (localizer or reformat)"
        normals = [_slice_normal_z(i.image_orientation_patient or "") for i in present]
        if any(n is None for n in normals):
            return "Image Orientation (Patient) is missing or malformed"
        if any(n is not None and n < _AXIAL_MIN_NORMAL_Z for n in normals):
            return "slices are not axial (Image Orientation (Patient))"

    thicknesses = [i.slice_thickness for i in present if i.slice_thickness is not None]
    if not thicknesses:
        return "Slice Thickness is missing"
    thickness = statistics.median(thicknesses)
    if not cfg.min_slice_thickness_mm <= thickness <= cfg.max_slice_thickness_mm:
        kind = "thin" if thickness < cfg.min_slice_thickness_mm else "thick"
        return (
            f"slice thickness {thickness:g} mm is outside {cfg.min_slice_thickness_mm:g}"
            f"–{cfg.max_slice_thickness_mm:g} mm ({kind} reconstruction)"
        )

    if len(present) < cfg.min_slices:
        return f"{len(present)} slices, fewer than the minimum of {cfg.min_slices}"

    description = series.series_description or ""
    if cfg.series_description_include and not re.search(
        cfg.series_description_include, description
    ):
        return "series description does not match series_description_include"
    if cfg.series_description_exclude and re.search(cfg.series_description_exclude, description):
        return "series description matches series_description_exclude"
    return None
