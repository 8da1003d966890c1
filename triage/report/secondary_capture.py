"""The summary image series: key slices with the heat map burnt in, and the probability curve.

Many viewers show an SR as an unreadable tree, if at all, and some ignore a KOS. Every
viewer shows an image. For positives, this builds a Secondary Capture series (highdicom
``SCImage``) in the analysed study: first one page with the calibrated slice probability
along the scan (position in mm, the slice threshold marked, the key slices dotted), then
one RGB image per key slice, rendered at W700/L100 with its heat map overlaid. The warning
"AI PE triage - NOT FOR DIAGNOSTIC USE" is the series description and is burnt into every
image, so it survives a screenshot or an export without the header.

The images carry text only about the algorithm's output: no patient name, ID or date is
burnt in.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID

from triage import __version__
from triage.report.device import MODEL_NAME, Device
from triage.report.result import AnalysisResult
from triage.report.source import by_sop_instance_uid, check_sources, evidence
from triage.report.sr import SERIES_DESCRIPTION
from triage.report.uids import derive_uid

SC_SERIES_NUMBER = 9903
WARNING = SERIES_DESCRIPTION
"""Burnt into every image, as in the series description."""

WINDOW_CENTER = 100.0
WINDOW_WIDTH = 700.0
"""The PE window (W700/L100): contrast-filled arteries bright, clots darker grey."""

BODY_PART = "CHEST"
"""Body Part Examined of the summary images: a CTPA's slices show the chest."""

HEATMAP_OPACITY = 0.45
"""Largest opacity of the heat-map colour, at the map's peak."""

_CURVE_SIZE = (512, 640)  # columns, rows
_TEXT = (255, 255, 255)
_WARNING_COLOUR = (255, 210, 0)


@dataclass(frozen=True)
class KeySlice:
    """One flagged slice to show, with the heat map of where the model looked.

    Parameters
    ----------
    sop_instance_uid : str
        The source slice.
    hu : numpy.ndarray
        ``(Rows, Columns)`` Hounsfield units of the source slice (see :func:`slice_hu`).
    heatmap : numpy.ndarray or None
        ``(Rows, Columns)`` in [0, 1] on the same grid (``model.explain.SliceHeatmap
        .heatmap``); None shows the slice alone.
    """

    sop_instance_uid: str
    hu: NDArray[np.floating]
    heatmap: NDArray[np.floating] | None = None

    def __post_init__(self) -> None:
        if self.hu.ndim != 2:
            raise ValueError(f"The slice must be a 2-D image, not shape {self.hu.shape}.")
        if self.heatmap is not None:
            if self.heatmap.shape != self.hu.shape:
                raise ValueError(
                    f"The heat map of {self.sop_instance_uid} has shape {self.heatmap.shape}, "
                    f"but its slice has {self.hu.shape}; map it to the slice's pixel grid."
                )
            if (
                not np.isfinite(self.heatmap).all()
                or self.heatmap.min() < 0
                or (self.heatmap.max() > 1)
            ):
                raise ValueError(f"The heat map of {self.sop_instance_uid} must lie in [0, 1].")


def slice_hu(dataset: Dataset) -> NDArray[np.float32]:
    """The Hounsfield units of a CT slice with its pixel data (rescale applied)."""
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    return (dataset.pixel_array.astype(np.float32) * slope + intercept).astype(np.float32)


# --------------------------------------------------------------------------- rendering


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def window_unit(
    hu: NDArray[np.floating], centre: float = WINDOW_CENTER, width: float = WINDOW_WIDTH
) -> NDArray[np.float32]:
    """Hounsfield units at one window as grey in [0, 1] (W700/L100 unless told)."""
    low = centre - width / 2.0
    return np.clip((np.asarray(hu, np.float32) - low) / width, 0.0, 1.0)


def jet(values: NDArray[np.float32]) -> NDArray[np.float32]:
    """The jet colour scale (blue, cyan, yellow, red) of values in [0, 1], as RGB in [0, 1]."""
    four = 4.0 * values[..., None]
    centres = np.array([3.0, 2.0, 1.0], np.float32)  # red, green, blue
    return np.clip(1.5 - np.abs(four - centres), 0.0, 1.0)


def _burn_text(image: Image.Image, lines: Sequence[str], top: int = 6) -> None:
    """Write lines at the top left on a dark band, the warning first and in yellow."""
    draw = ImageDraw.Draw(image)
    size = max(12, image.width // 36)
    font = _font(size)
    y: float = top
    for index, line in enumerate(lines):
        box = draw.textbbox((6, y), line, font=font)
        draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
        draw.text((6, y), line, font=font, fill=_WARNING_COLOUR if index == 0 else _TEXT)
        y = box[3] + 5


def render_key_slice(key: KeySlice, caption: Sequence[str]) -> NDArray[np.uint8]:
    """The slice at W700/L100 with its heat map overlaid and the warning burnt in.

    The overlay's opacity follows the heat map (zero where the model did not look), so
    the anatomy under a cold region stays as it is.

    Returns
    -------
    numpy.ndarray
        ``(Rows, Columns, 3)`` uint8 RGB on the slice's own pixel grid.
    """
    grey = window_unit(key.hu)[..., None]
    rgb = np.repeat(grey, 3, axis=-1)
    if key.heatmap is not None:
        heat = np.asarray(key.heatmap, np.float32)
        alpha = (HEATMAP_OPACITY * heat)[..., None]
        rgb = (1.0 - alpha) * rgb + alpha * jet(heat)
    image = Image.fromarray(np.round(rgb * 255.0).astype(np.uint8), "RGB")
    _burn_text(image, [WARNING, *caption])
    return np.asarray(image)


def render_probability_curve(
    positions_mm: Sequence[float],
    probabilities: Sequence[float],
    threshold: float | None,
    key_positions_mm: Sequence[float] = (),
) -> NDArray[np.uint8]:
    """The calibrated slice probability along the scan, head at the top.

    Position along the patient's long axis runs down the page (as one scrolls through
    the slices), probability from 0 at the left to 1 at the right; the slice threshold
    is a dashed vertical line and the key slices are dots.

    Returns
    -------
    numpy.ndarray
        ``(640, 512, 3)`` uint8 RGB.
    """
    if len(positions_mm) != len(probabilities) or not len(positions_mm):
        raise ValueError("The curve needs one probability per slice position, and a slice.")
    width, height = _CURVE_SIZE
    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    font = _font(14)
    left, right, top, bottom = 70, width - 24, 110, height - 50
    positions = np.asarray(positions_mm, np.float64)
    order = np.argsort(-positions)  # cranial first
    positions, values = positions[order], np.asarray(probabilities, np.float64)[order]
    head, foot = float(positions[0]), float(positions[-1])
    span = head - foot or 1.0

    def x(p: float) -> float:
        return left + (right - left) * min(max(p, 0.0), 1.0)

    def y(z: float) -> float:
        return top + (bottom - top) * (head - z) / span

    draw.rectangle((left, top, right, bottom), outline=(128, 128, 128))
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.line((x(tick), bottom, x(tick), bottom + 5), fill=(128, 128, 128))
        draw.text((x(tick), bottom + 8), f"{tick:g}", font=font, fill=_TEXT, anchor="mt")
    draw.text(
        ((left + right) / 2, bottom + 28), "slice probability", font=font, fill=_TEXT, anchor="mt"
    )
    for z in (head, (head + foot) / 2.0, foot):
        draw.text((left - 6, y(z)), f"{z:.0f} mm", font=font, fill=_TEXT, anchor="rm")
    if threshold is not None:
        for start in range(top, bottom, 10):
            draw.line(
                (x(threshold), start, x(threshold), min(start + 5, bottom)), fill=(255, 80, 80)
            )
        draw.text(
            (x(threshold) + 4, top + 4), f"threshold {threshold:.2f}", font=font, fill=(255, 80, 80)
        )
    draw.line(
        [(x(v), y(z)) for z, v in zip(positions, values, strict=True)], fill=(80, 200, 255), width=2
    )
    for z in key_positions_mm:
        value = float(np.interp(-z, -positions, values))
        draw.ellipse((x(value) - 4, y(z) - 4, x(value) + 4, y(z) + 4), fill=(255, 210, 0))
    _burn_text(
        image,
        [
            WARNING,
            "Slice probability along the scan (head at top)",
            "Dots: key slices in this series",
        ],
    )
    return np.asarray(image)


# --------------------------------------------------------------------------- DICOM


def _orientation_letter(cosines: Sequence[float]) -> str:
    """The patient direction (LPS) that a direction cosine vector points along most."""
    axis = int(np.argmax(np.abs(cosines)))
    positive, negative = (("L", "R"), ("P", "A"), ("H", "F"))[axis]
    return positive if cosines[axis] > 0 else negative


def positions_mm(headers: Sequence[Dataset]) -> NDArray[np.float64]:
    """Each header's position along the slice normal, larger towards the head."""
    iop = np.asarray([float(v) for v in headers[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    if normal[2] < 0:
        normal = -normal
    ipp = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    return np.asarray(ipp @ normal, np.float64)


def sc_uids(
    result: AnalysisResult, source_series_instance_uid: str, count: int, uid_prefix: str
) -> tuple[str, list[str]]:
    """The series UID and ``count`` SOP Instance UIDs, derived so a rebuild reuses them."""
    seed = (result.result_id, source_series_instance_uid)
    series = derive_uid(uid_prefix, *seed, "sc", "series")
    return series, [derive_uid(uid_prefix, *seed, "sc", "instance", str(i)) for i in range(count)]


def build_secondary_capture(
    result: AnalysisResult,
    source_datasets: Sequence[Dataset],
    key_slices: Sequence[KeySlice],
    *,
    device: Device | None = None,
    uid_prefix: str = PYDICOM_ROOT_UID,
    content_datetime: datetime.datetime | None = None,
    patient_study: Dataset | None = None,
) -> list[hd.sc.SCImage]:
    """Build the summary series for a positive result: the curve, then the key slices.

    Parameters
    ----------
    result : AnalysisResult
        What the analysis concluded; its slice probabilities make the curve.
    source_datasets : Sequence[pydicom.Dataset]
        Headers of the analysed series: every slice with a probability (for the curve's
        positions) and each key slice. The patient and study come from the first one,
        made conformant (see :mod:`triage.report.conform`).
    key_slices : Sequence[KeySlice]
        The flagged slices to show, in order (most probable first).
    device, uid_prefix, content_datetime
        As for :func:`triage.report.build_sr`, so every object names the same device.
    patient_study : pydicom.Dataset or None, optional
        As for :func:`triage.report.build_sr`.

    Returns
    -------
    list of highdicom.sc.SCImage
        Empty unless the result is positive; else the curve page (instance 1) and one
        image per key slice, in the analysed study and a series of their own, with UIDs
        that are the same for every build from the same result.

    Raises
    ------
    ValueError
        When the source headers are not one series, or lack a key slice.
    """
    series_uid = check_sources(result, source_datasets)
    if result.decision != "present":
        return []
    headers = by_sop_instance_uid(source_datasets)
    missing = [k.sop_instance_uid for k in key_slices if k.sop_instance_uid not in headers]
    if missing:
        raise ValueError(
            f"The key slices {missing} are not among the source headers; pass the header "
            "of every slice shown."
        )
    curve_headers = [
        ds for ds in source_datasets if str(ds.SOPInstanceUID) in result.slice_probabilities
    ]
    if not curve_headers:
        raise ValueError("No source header has a slice probability; there is no curve to draw.")
    positions = positions_mm(curve_headers)
    key_positions = (
        positions_mm([headers[k.sop_instance_uid] for k in key_slices])
        if (key_slices)
        else np.empty(0)
    )
    pages = [
        render_probability_curve(
            positions.tolist(),
            [result.slice_probabilities[str(ds.SOPInstanceUID)] for ds in curve_headers],
            result.thresholds.get("slice"),
            key_positions.tolist(),
        )
    ]
    orientations: list[tuple[str, str]] = []
    spacings: list[tuple[float, float] | None] = []
    # The curve page has no patient geometry of its own; highdicom's patient coordinate
    # system asks for an orientation, and the page's columns do run head to foot.
    first = headers[key_slices[0].sop_instance_uid] if key_slices else curve_headers[0]
    iop = [float(v) for v in first.ImageOrientationPatient]
    orientations.append((_orientation_letter(iop[:3]), "F"))
    spacings.append(None)
    for key, z in zip(key_slices, key_positions, strict=True):
        header = headers[key.sop_instance_uid]
        caption = [
            f"Slice at {z:.1f} mm, instance {header.get('InstanceNumber', '?')}",
            f"PE probability {100.0 * result.slice_probabilities.get(key.sop_instance_uid, 0):.0f}%"
            f" - {result.algorithm_version}",
            "W700/L100; colour: where the model looked" if key.heatmap is not None else "W700/L100",
        ]
        pages.append(render_key_slice(key, caption))
        iop = [float(v) for v in header.ImageOrientationPatient]
        orientations.append((_orientation_letter(iop[:3]), _orientation_letter(iop[3:])))
        spacing = header.get("PixelSpacing")
        spacings.append((float(spacing[0]), float(spacing[1])) if spacing else None)

    sc_series, sop_uids = sc_uids(result, series_uid, len(pages), uid_prefix)
    device = device or Device.default(uid_prefix)
    reference = evidence([patient_study or source_datasets[0]])[0]
    when = content_datetime or datetime.datetime.now()
    images = []
    for number, (pixels, orientation, spacing, sop_uid) in enumerate(
        zip(pages, orientations, spacings, sop_uids, strict=True), start=1
    ):
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=reference,
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=sc_series,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=number,
            manufacturer=device.manufacturer,
            # highdicom annotates this as int, but takes (and needs) millimetres.
            pixel_spacing=spacing,  # type: ignore[arg-type]
            patient_orientation=orientation,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            contributing_equipment=[device.contributing_equipment(result)],
            series_description=SERIES_DESCRIPTION,
            institution_name=device.institution_name,
            manufacturer_model_name=MODEL_NAME,
            software_versions=__version__,
            device_serial_number=device.serial_number,
            content_date=when.date(),
            content_time=when.time(),
            specific_character_set=reference.get("SpecificCharacterSet"),
        )
        # highdicom has no argument for it. Without it, Laterality (Type 2C, for paired
        # body parts) is required by validators that cannot tell a chest is unpaired.
        image.BodyPartExamined = BODY_PART
        images.append(image)
    return images
