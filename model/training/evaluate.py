"""``triage-model evaluate`` and ``compare``: a bundle on labelled data, as the paper
reports it, and two bundles against each other with DeLong's test."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from model.labels import SeriesLabels, read_labels
from model.parallel import process_map
from model.predict import Prediction, Predictor
from model.preprocess import preprocess_or_reason
from model.report import LevelData, write_report
from model.stats import delong_test
from model.training.data import series_files


@dataclass
class ScoredData:
    """Every labelled series a bundle could score, and those it could not."""

    predictions: dict[str, Prediction] = field(default_factory=dict)
    labels: dict[str, bool] = field(default_factory=dict)
    image_labels: dict[str, dict[str, bool]] = field(default_factory=dict)
    excluded: list[dict[str, str]] = field(default_factory=list)


def score(predictor: Predictor, data_dir: Path, labels_csv: Path, workers: int = 1) -> ScoredData:
    """Run the predictor over every labelled, determinate series.

    With ``workers`` above one, worker processes read and preprocess the next series
    while the network scores this one (at most ``workers`` series wait, ~75 MB each).
    """
    out = ScoredData()
    jobs: list[tuple[str, SeriesLabels, list[Path]]] = []
    for uid, series in sorted(read_labels(labels_csv).items()):
        if series.indeterminate:
            out.excluded.append({"series_instance_uid": uid, "reason": "indeterminate exam"})
            continue
        files = series_files(data_dir, series)
        if not files:
            out.excluded.append({"series_instance_uid": uid, "reason": "no files"})
            continue
        jobs.append((uid, series, files))
    config = predictor.preprocess_config
    prepared = process_map(
        preprocess_or_reason, [(files, config) for _, _, files in jobs], workers, ahead=workers
    )
    for (uid, series, _), pre in tqdm(
        zip(jobs, prepared, strict=True), total=len(jobs), desc="predict", unit="series"
    ):
        if isinstance(pre, str):
            out.excluded.append({"series_instance_uid": uid, "reason": pre})
            continue
        prediction = predictor.predict_preprocessed(pre)
        # The headers (~3 MB for 96 slices) and the model input (~75 MB at 256 px) are
        # for a report on one series; hundreds of them kept for the whole evaluation
        # would take gigabytes.
        prediction.headers = []
        prediction.series = None
        out.predictions[uid] = prediction
        out.labels[uid] = series.positive
        out.image_labels[uid] = series.image_labels
    return out


def _slice_pairs(data: ScoredData, uid: str, raw: bool = False) -> list[tuple[str, bool, float]]:
    prediction = data.predictions[uid]
    probs = prediction.raw_slice_probabilities if raw else prediction.slice_probabilities
    labels = data.image_labels[uid]
    return [(sop, labels[sop], p) for sop, p in probs.items() if sop in labels]


def _levels(data: ScoredData, thresholds: dict[str, Any]) -> list[LevelData]:
    """Stack and slice levels of the calibrated probabilities, at the bundle's thresholds."""
    uids = sorted(data.predictions)
    slices = [pair for uid in uids for pair in _slice_pairs(data, uid)]
    return [
        LevelData(
            "stack",
            [data.labels[u] for u in uids],
            [data.predictions[u].stack_probability for u in uids],
            thresholds["stack"].value,
            thresholds["stack"].provenance,
        ),
        LevelData(
            "slice",
            [lab for _, lab, _ in slices],
            [p for _, _, p in slices],
            thresholds["slice"].value,
            thresholds["slice"].provenance,
        ),
    ]


def _raw_levels(data: ScoredData, calibrated: list[LevelData]) -> list[LevelData]:
    """The same levels with the network's raw outputs, for the side-by-side figures.

    The threshold is the bundle's, carried to the raw scale: the lowest raw score among
    the predictions it flags (calibration is monotone), so the confusion matrix is the
    same and only the probabilities' calibration differs.
    """
    uids = sorted(data.predictions)
    raw_scores: dict[str, list[float | None]] = {
        "stack": [data.predictions[u].raw_stack_probability for u in uids],
        "slice": [p for u in uids for _, _, p in _slice_pairs(data, u, raw=True)],
    }
    out = []
    for level in calibrated:
        raw = [float(x) for x in raw_scores[level.name] if x is not None]
        if len(raw) != len(level.scores):
            raise ValueError(f"raw {level.name} outputs are missing for some predictions")
        flagged = [r for r, c in zip(raw, level.scores, strict=True) if c >= level.threshold]
        out.append(
            LevelData(
                level.name,
                level.labels,
                raw,
                min(flagged) if flagged else float("inf"),
                "the bundle's threshold, carried to the raw outputs",
            )
        )
    return out


def evaluate(
    bundle_dir: Path,
    data_dir: Path,
    labels_csv: Path,
    out_dir: Path,
    precision: str | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Write the evaluation report of a bundle on labelled data; return ``report.json``.

    ``workers`` processes preprocess series while the network scores (see :func:`score`).
    """
    predictor = Predictor.load(bundle_dir, precision=precision)
    data = score(predictor, data_dir, labels_csv, workers)
    if not data.predictions:
        raise ValueError("no labelled series could be scored; see the reasons above")
    thresholds = predictor.bundle.thresholds
    uids = sorted(data.predictions)
    levels = _levels(data, thresholds)
    calibrated = any(c.method != "none" for c in predictor.calibrators.values())
    raw_levels = _raw_levels(data, levels) if calibrated else []
    rows = [
        {
            "series_instance_uid": u,
            "study_instance_uid": data.predictions[u].study_instance_uid,
            "label": int(data.labels[u]),
            "stack_probability": data.predictions[u].stack_probability,
            "raw_stack_probability": data.predictions[u].raw_stack_probability,
            "positive": int(data.predictions[u].positive),
            "slices_used": data.predictions[u].slices_used,
        }
        for u in uids
    ]
    b = predictor.bundle
    return write_report(
        out_dir,
        levels,
        rows,
        {
            "name": b.name,
            "version": b.version,
            "sha256": b.manifest_sha256,
            "trained": b.trained,
            "precision": predictor.precision,
        },
        {
            "series scored": len(uids),
            "series excluded": len(data.excluded),
            "excluded": data.excluded,
            "calibration": {k: c.method for k, c in predictor.calibrators.items()},
        },
        raw_levels,
    )


def compare(bundle_a: Path, bundle_b: Path, data_dir: Path, labels_csv: Path) -> dict[str, Any]:
    """Paired DeLong tests of two bundles' ROC AUCs at the stack and slice levels."""
    scored = [score(Predictor.load(b), data_dir, labels_csv) for b in (bundle_a, bundle_b)]
    common = sorted(set(scored[0].predictions) & set(scored[1].predictions))
    if not common:
        raise ValueError("the two bundles scored no series in common")
    stack = delong_test(
        [scored[0].labels[u] for u in common],
        [scored[0].predictions[u].stack_probability for u in common],
        [scored[1].predictions[u].stack_probability for u in common],
    )
    slice_a: list[tuple[str, bool, float]] = []
    slice_b: dict[str, float] = {}
    for u in common:
        slice_a += _slice_pairs(scored[0], u)
        slice_b.update({sop: p for sop, _, p in _slice_pairs(scored[1], u)})
    paired = [(lab, p, slice_b[sop]) for sop, lab, p in slice_a if sop in slice_b]
    slice_level = delong_test(
        [x[0] for x in paired], [x[1] for x in paired], [x[2] for x in paired]
    )
    return {
        "bundle_a": str(bundle_a),
        "bundle_b": str(bundle_b),
        "series": len(common),
        "stack": stack.to_dict(),
        "slice": {**slice_level.to_dict(), "slices": len(paired)},
    }
