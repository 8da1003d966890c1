"""The study view's key images: the flagged slices as PNGs with their heat maps, and the curve.

Made by the worker after the result, its reports and its deliveries are committed, so that
the heat maps never delay the flag. For the top-K flagged slices (``worker.heatmap_slices``)
:class:`model.explain.Explainer` makes a heat map on the source slice's grid (Grad-CAM
sharpened by the input gradient), and
each slice is written to the result's outbox folder (``key_images/``, see
:func:`triage.storage.outbox.write_key_images`) as three PNGs:

- the slice at the PE window (W700/L100), greyscale;
- the slice at a lung window (W1500/L-600), greyscale;
- the heat map as an RGBA overlay: the jet colour, its opacity the map's value (zero where
  the model did not look), for the study view to lay over either window at any opacity.

For a positive that a DICOM destination wants it for (``send_secondary_capture``), the
summary Secondary Capture series (:mod:`triage.report.secondary_capture`) is built from
the same heat maps and written with them (``sc_NN.dcm``, listed in the index); the
dispatcher sends it with the SR and KOS.

``key_images.json`` indexes them (per image: SOP Instance UID, instance number, slice
position in mm, calibrated probability) and holds the per-slice probability curve with the
slice threshold. The outbox outlives the spool (``retention.outbox_days``), so the study
view still works once retention has deleted the images.

Nothing here imports TensorFlow at import time; the explainer is loaded on first use.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset

from triage.analyse.decide import Outcome
from triage.analyse.reports import analysis_result, builder_options, encode
from triage.config import ReportConfig
from triage.report.secondary_capture import (
    KeySlice,
    build_secondary_capture,
    jet,
    positions_mm,
    slice_hu,
    window_unit,
)
from triage.report.source import conformant_header
from triage.storage.outbox import KEY_IMAGES_INDEX, write_key_images

PE_WINDOW = (100.0, 700.0)
"""(centre, width) of the PE window: contrast-filled arteries bright, clots darker grey."""
LUNG_WINDOW = (-600.0, 1500.0)
"""(centre, width) of the lung window."""


@dataclass(frozen=True)
class KeyImage:
    """One explained slice: its pixels in Hounsfield units and its heat map."""

    sop_instance_uid: str
    instance_number: int | None
    position_mm: float
    probability: float
    hu: NDArray[np.float32]
    heatmap: NDArray[np.float32]


@dataclass(frozen=True)
class SecondaryCaptureRequest:
    """What building the Secondary Capture series needs besides the key images."""

    report: ReportConfig
    bundle: Any


@dataclass(frozen=True)
class KeyImagesWritten:
    """What :func:`make_key_images` wrote, and what it cost."""

    folder: Path | None
    images: list[KeyImage]
    seconds: float
    secondary_capture: int = 0


def windowed(hu: NDArray[np.floating], centre: float, width: float) -> NDArray[np.uint8]:
    """Hounsfield units at one window as 8-bit grey."""
    return np.round(window_unit(hu, centre, width) * 255.0).astype(np.uint8)


def overlay(heatmap: NDArray[np.floating]) -> NDArray[np.uint8]:
    """The heat map as RGBA: jet colour, opacity the map's value in [0, 1]."""
    heat = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)
    rgba = np.concatenate([jet(heat), heat[..., None]], axis=-1)
    return np.round(rgba * 255.0).astype(np.uint8)


def _png(pixels: NDArray[np.uint8], mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _explainer(predictor: Any, cache: dict[int, Any]) -> Any:
    """The predictor's explainer, made once per predictor (it wraps every fold's CNN)."""
    from model.explain import Explainer

    key = id(predictor)
    if key not in cache:
        cache.clear()
        cache[key] = Explainer(predictor.slice_cnns, batch_size=predictor.batch_size)
    return cache[key]


def explain(
    predictor: Any,
    files: Sequence[Path],
    outcome: Outcome,
    top_k: int,
    cache: dict[int, Any],
) -> list[Any]:
    """Heat maps (``model.explain.SliceHeatmap``) of the top-K flagged slices.

    On the model input the prediction was made on; where the predictor kept none, the
    series is preprocessed again.
    """
    probabilities = outcome.slice_probabilities or {}
    if top_k <= 0 or not probabilities or not outcome.flagged:
        return []
    series = outcome.series
    if series is None:
        series = predictor.preprocess(files)
    # Never more than were flagged: the same ranking, so the explained slices are flagged.
    explanation = _explainer(predictor, cache).explain(
        series,
        probabilities,
        top_k=min(top_k, len(outcome.flagged)),
        threshold=outcome.thresholds.slice,
    )
    return list(explanation.heatmaps)


def key_images(
    heatmaps: Sequence[Any], files: Sequence[Path], headers: Sequence[Dataset]
) -> list[KeyImage]:
    """Each heat map with its slice's pixels, instance number and position."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in headers}
    wanted = {h.sop_instance_uid for h in heatmaps}
    paths: dict[str, Path] = {}
    for path in files:
        uid = str(
            dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
        )
        if uid in wanted:
            paths[uid] = path
    images = []
    for heatmap in heatmaps:
        uid = heatmap.sop_instance_uid
        header = by_uid[uid]
        number = header.get("InstanceNumber")
        images.append(
            KeyImage(
                sop_instance_uid=uid,
                instance_number=int(number) if number is not None else None,
                position_mm=float(positions_mm([header])[0]),
                probability=float(heatmap.probability),
                hu=slice_hu(dcmread(paths[uid])),
                heatmap=np.asarray(heatmap.heatmap, np.float32),
            )
        )
    return images


def index(
    outcome: Outcome, headers: Sequence[Dataset], images: Sequence[KeyImage], method: str
) -> dict[str, Any]:
    """The content of ``key_images.json``; ``method`` is the explainer's."""
    probabilities = outcome.slice_probabilities or {}
    curve_headers = [ds for ds in headers if str(ds.SOPInstanceUID) in probabilities]
    positions = positions_mm(curve_headers) if curve_headers else np.empty(0)
    curve = sorted(
        (
            {
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "position_mm": round(float(z), 2),
                "probability": probabilities[str(ds.SOPInstanceUID)],
            }
            for ds, z in zip(curve_headers, positions, strict=True)
        ),
        key=lambda point: float(point["position_mm"]),  # type: ignore[arg-type]
    )
    return {
        "method": method,
        "threshold": outcome.thresholds.slice,
        "windows": {
            "pe": {"center": PE_WINDOW[0], "width": PE_WINDOW[1]},
            "lung": {"center": LUNG_WINDOW[0], "width": LUNG_WINDOW[1]},
        },
        "curve": curve,
        "images": [
            {
                "sop_instance_uid": image.sop_instance_uid,
                "instance_number": image.instance_number,
                "position_mm": round(image.position_mm, 2),
                "probability": image.probability,
                "pe_window": f"key_{number:02d}_pe.png",
                "lung_window": f"key_{number:02d}_lung.png",
                "heatmap": f"key_{number:02d}_heatmap.png",
            }
            for number, image in enumerate(images, start=1)
        ],
    }


def make_key_images(
    predictor: Any,
    files: Sequence[Path],
    headers: Sequence[Dataset],
    outcome: Outcome,
    data_dir: Path,
    result_id: int,
    top_k: int,
    cache: dict[int, Any],
    secondary_capture: SecondaryCaptureRequest | None = None,
    bound: Any = None,
) -> KeyImagesWritten:
    """Explain the top-K flagged slices and write the key images of a committed result.

    Parameters
    ----------
    predictor : model.predict.Predictor
        The loaded predictor (its ``slice_cnns``, ``preprocess_config``, ``batch_size``).
    files, headers : sequence
        The series' spooled files and their headers.
    outcome : Outcome
        What the analysis concluded: the probabilities, the flags, the threshold.
    data_dir, result_id
        Where the outbox folder is.
    top_k : int
        At most this many slices get a heat map.
    cache : dict
        Keeps the explainer between jobs (the worker's).
    secondary_capture : SecondaryCaptureRequest, optional
        Also build the summary Secondary Capture series (a positive with key images).
    bound : BoundLogger, optional
        The job's logger, for the header repairs of the Secondary Capture.
    """
    started = time.perf_counter()
    heatmaps = explain(predictor, files, outcome, top_k, cache)
    explained = time.perf_counter() - started
    images = key_images(heatmaps, files, headers)
    content = index(outcome, headers, images, _explainer(predictor, cache).method)
    files_out: dict[str, bytes] = {}
    for entry, image in zip(content["images"], images, strict=True):
        files_out[entry["pe_window"]] = _png(windowed(image.hu, *PE_WINDOW), "L")
        files_out[entry["lung_window"]] = _png(windowed(image.hu, *LUNG_WINDOW), "L")
        files_out[entry["heatmap"]] = _png(overlay(image.heatmap), "RGBA")
    content["secondary_capture"] = []
    if secondary_capture is not None and images:
        for number, dataset in enumerate(
            _secondary_capture(secondary_capture, outcome, headers, images, result_id, bound),
            start=1,
        ):
            name = f"sc_{number:02d}.dcm"
            files_out[name] = encode(dataset)
            content["secondary_capture"].append(
                {"file": name, "sop_instance_uid": str(dataset.SOPInstanceUID)}
            )
    # What they cost, for benchmarks/latency.py: the heat maps and everything
    # (with reading the key slices, the PNGs and the Secondary Capture).
    content["seconds"] = {"heatmaps": explained, "total": time.perf_counter() - started}
    files_out[KEY_IMAGES_INDEX] = json.dumps(content, indent=1).encode()
    folder = write_key_images(data_dir, result_id, files_out)
    return KeyImagesWritten(
        folder, images, time.perf_counter() - started, len(content["secondary_capture"])
    )


def _secondary_capture(
    request: SecondaryCaptureRequest,
    outcome: Outcome,
    headers: Sequence[Dataset],
    images: Sequence[KeyImage],
    result_id: int,
    bound: Any,
) -> list[Dataset]:
    """The summary series: the curve page, then each key slice with its heat map."""
    analysis = analysis_result(f"result-{result_id}", outcome, request.bundle)
    patient_study = conformant_header(headers[0], bound)
    keys = [KeySlice(i.sop_instance_uid, i.hu, i.heatmap) for i in images]
    return list(
        build_secondary_capture(
            analysis, headers, keys, **builder_options(request.report, patient_study)
        )
    )
