"""The study view: the slice probability curve, the key images and the verdict form.

The key images are the worker's: PNGs in ``key_images/`` of the result's outbox folder
(so the view still works after the spool is released), with ``key_images.json``
describing them and the per-slice curve. The folder is read defensively: a result
without it (an older worker, an undetermined result, a write that failed) still gets
its curve, from the result row's slice probabilities and the instances' positions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.db.models import Instance, Job, JobState, Result, Series, SeriesState, Study
from triage.storage.outbox import KEY_IMAGES_INDEX, key_images_dir

# Only plain PNG names are served: no separators, no leading dot, so no path can escape.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.png$")


@dataclass(frozen=True)
class KeyImage:
    """One key slice: its window images, its heat map and its caption."""

    image: str
    lung: str | None
    overlay: str | None
    sop_instance_uid: str | None
    instance_number: int | None
    position_mm: float | None
    probability: float | None


@dataclass
class Curve:
    """The per-slice probability against position along the scan."""

    positions_mm: list[float] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    threshold: float | None = None


def _first(entry: dict[str, Any], *names: str) -> Any:
    for name in names:
        if entry.get(name) is not None:
            return entry[name]
    return None


def _number(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _png(folder: Path, value: Any) -> str | None:
    if isinstance(value, str) and _SAFE_NAME.match(value) and (folder / value).is_file():
        return value
    return None


def read_key_images(data_dir: Path, result_id: int) -> tuple[list[KeyImage], Curve | None]:
    """The key images and the curve of ``key_images.json``; empty and None when absent
    or unreadable (an entry whose PNG is missing is left out)."""
    folder = key_images_dir(data_dir, result_id)
    try:
        index = json.loads((folder / KEY_IMAGES_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [], None
    if not isinstance(index, dict):
        return [], None
    images = []
    entries = _first(index, "images", "key_images", "slices")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        image = _png(folder, _first(entry, "pe_window", "image", "file", "png"))
        if image is None:
            continue
        number = _number(_first(entry, "instance_number", "InstanceNumber"))
        images.append(
            KeyImage(
                image=image,
                lung=_png(folder, _first(entry, "lung", "lung_image", "lung_window", "lung_png")),
                overlay=_png(
                    folder, _first(entry, "overlay", "heat_map", "heatmap", "overlay_png")
                ),
                sop_instance_uid=_first(entry, "sop_instance_uid", "SOPInstanceUID"),
                instance_number=None if number is None else int(number),
                position_mm=_number(_first(entry, "position_mm", "slice_position_mm", "position")),
                probability=_number(_first(entry, "probability", "calibrated_probability")),
            )
        )
    curve = None
    raw = _first(index, "curve", "slice_curve")
    threshold = _number(index.get("threshold"))
    if isinstance(raw, list):
        # The worker's form: one point per slice, {position_mm, probability, ...}.
        points = [
            (_number(p.get("position_mm")), _number(p.get("probability")))
            for p in raw
            if isinstance(p, dict)
        ]
        kept = sorted((x, p) for x, p in points if x is not None and p is not None)
        curve = Curve([x for x, _ in kept], [p for _, p in kept], threshold)
    elif isinstance(raw, dict):
        positions = _first(raw, "positions_mm", "position_mm", "positions")
        probabilities = _first(raw, "probabilities", "calibrated_probabilities")
        if isinstance(positions, list) and isinstance(probabilities, list):
            pairs = zip(positions, probabilities, strict=False)
            numbers = [(_number(x), _number(p)) for x, p in pairs]
            kept = [(x, p) for x, p in numbers if x is not None and p is not None]
            own = _number(raw.get("threshold"))
            curve = Curve(
                [x for x, _ in kept], [p for _, p in kept], own if own is not None else threshold
            )
    return images, curve


def key_image_path(data_dir: Path, result_id: int, name: str) -> Path | None:
    """The file a key image request may be answered with, or None.

    Only a plain ``.png`` name directly inside the result's key image folder: a name with
    a separator, ``..`` or a link out of the folder is refused.
    """
    if not _SAFE_NAME.match(name):
        return None
    folder = key_images_dir(data_dir, result_id)
    path = folder / name
    try:
        resolved = path.resolve(strict=True)
        inside = resolved.parent == folder.resolve(strict=True)
    except OSError:
        return None
    return resolved if inside and resolved.is_file() else None


def _position_mm(value: str | None) -> float | None:
    # The z of Image Position (Patient): the axial position of a CTPA slice.
    parts = (value or "").split("\\")
    return _number(parts[2]) if len(parts) == 3 else None


def curve_from_result(session: Session, result: Result) -> Curve:
    """The curve from the result row: each slice's probability at its instance's position."""
    probabilities = result.slice_probabilities or {}
    if not isinstance(probabilities, dict) or not probabilities:
        return Curve(threshold=result.threshold_slice)
    rows = session.execute(
        select(Instance.sop_instance_uid, Instance.image_position_patient).where(
            Instance.series_id == result.series_id
        )
    ).all()
    positions = {uid: _position_mm(ipp) for uid, ipp in rows}
    points = sorted(
        (positions[uid], float(p))
        for uid, p in probabilities.items()
        if positions.get(uid) is not None and _number(p) is not None
    )
    return Curve(
        [x for x, _ in points if x is not None],
        [p for _, p in points],
        result.threshold_slice,
    )


def curve_svg(curve: Curve, width: int = 720, height: int = 220) -> Markup:
    """The curve as inline SVG: probability (0 to 1) against position in mm, with the
    threshold as a dashed line. Every value written is a number, so nothing is escaped."""
    left, right, top, bottom = 48, 12, 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg class="curve" id="curve" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="Slice probability along the scan">',
        f'<rect class="plot" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/>',
    ]
    for tick in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - tick)
        parts.append(f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}">{tick:.1f}</text>')
    if curve.positions_mm:
        lo, hi = min(curve.positions_mm), max(curve.positions_mm)
        span = hi - lo or 1.0

        def x_of(mm: float) -> float:
            return left + plot_w * (mm - lo) / span

        def y_of(p: float) -> float:
            return top + plot_h * (1 - min(max(p, 0.0), 1.0))

        points = " ".join(
            f"{x_of(x):.1f},{y_of(p):.1f}"
            for x, p in zip(curve.positions_mm, curve.probabilities, strict=False)
        )
        parts.append(f'<polyline class="line" points="{points}"/>')
        parts.append(f'<text class="tick start" x="{left}" y="{height - 16}">{lo:.0f} mm</text>')
        parts.append(
            f'<text class="tick end" x="{left + plot_w}" y="{height - 16}">{hi:.0f} mm</text>'
        )
    else:
        parts.append(
            f'<text class="tick" x="{left + 8}" y="{top + plot_h / 2:.0f}">'
            "no slice probabilities</text>"
        )
    if curve.threshold is not None:
        y = top + plot_h * (1 - min(max(curve.threshold, 0.0), 1.0))
        parts.append(
            f'<line class="threshold" id="threshold" x1="{left}" x2="{left + plot_w}" '
            f'y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{left + plot_w - 4}" y="{y - 4:.1f}" '
            f'text-anchor="end">threshold {curve.threshold:.2f}</text>'
        )
    parts.append(
        f'<text class="axis" x="{left + plot_w / 2:.0f}" y="{height - 2}">'
        "position along the scan (mm)</text></svg>"
    )
    return Markup("".join(parts))


@dataclass
class StudyView:
    """What ``study.html`` shows for one study."""

    study: Study
    series: Series | None
    result: Result | None
    images: list[KeyImage]
    curve: Curve
    images_from_outbox: bool
    # Before a result: where the study stands, and why (an undetermined job's reason).
    status: str | None = None


def study_view(session: Session, data_dir: Path, study: Study, result: Result | None) -> StudyView:
    """Gather the study view of ``study`` for its speaking ``result`` (None before one)."""
    if result is None:
        return StudyView(study, None, None, [], Curve(), False, _status(session, study))
    images, curve = read_key_images(data_dir, result.id)
    if curve is None or not curve.positions_mm:
        curve = curve_from_result(session, result)
    series = session.get(Series, result.series_id)
    return StudyView(study, series, result, images, curve, bool(images))


def _status(session: Session, study: Study) -> str:
    """A study without a result: its most telling job's state and reason, in words."""
    rows = session.execute(
        select(Series.state, Series.skip_reason, Job.state, Job.reason, Job.error)
        .outerjoin(Job, Job.series_id == Series.id)
        .where(Series.study_id == study.id)
    ).all()
    for _series, _skip, job_state, reason, error in rows:
        if job_state == JobState.UNDETERMINED:
            return f"Undetermined: {reason or 'no reason recorded'}"
        if job_state == JobState.FAILED:
            text = " ".join((error or "no error recorded").split())[:200]
            return f"The analysis failed: {text}"
    for series_state, _skip, job_state, _reason, _error in rows:
        if job_state in (JobState.QUEUED, JobState.RUNNING):
            return "The analysis is queued or running."
        if series_state == SeriesState.RECEIVING:
            return "The series is still arriving."
    skipped = [r for s, r, j, _, _ in rows if s == SeriesState.SKIPPED]
    if rows and len(skipped) == len(rows):
        return f"Nothing to analyse: {skipped[0] or 'every series was skipped'}"
    return "This study has no result yet."
