"""Calibration: fitted on out-of-fold predictions, stored in the bundle, applied by the
predictor to the stack and the slices alike."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from model.bundle import BundleError, init_bundle, load_bundle, write_bundle
from model.calibration import IDENTITY, Calibrator, fit_calibrator
from model.predict import Predictor, UntrainedBundleWarning
from model.report import LevelData, level_metrics
from model.synthetic import StudyParams, generate_study, write_study


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores whose true probability is much less extreme than the score."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, n)  # the network's logit
    truth = 1.0 / (1.0 + np.exp(-z / 3.0))  # what the logit really means
    labels = rng.random(n) < truth
    return labels, 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_a_fitted_calibrator_makes_probabilities_mean_what_they_say(method: str) -> None:
    labels, scores = _overconfident(4000, seed=1)
    calibrator = fit_calibrator(method, labels, scores, "test")
    test_labels, test_scores = _overconfident(4000, seed=2)  # fresh, held-out

    def ece(s: np.ndarray) -> float:
        return float(level_metrics(LevelData("stack", test_labels, s, 0.5, "t"))["ece"])

    calibrated = calibrator.apply(test_scores)
    assert ece(test_scores) > 0.08
    assert ece(calibrated) < 0.03
    # Monotone: the ranking, and so the ROC AUC, stays.
    order = np.argsort(test_scores, kind="stable")
    assert np.all(np.diff(calibrated[order]) >= -1e-12)
    if method == "platt":
        assert calibrator.slope == pytest.approx(1 / 3, abs=0.05)
    assert calibrator.fitted_on == {"n": 4000, "n_positive": int(labels.sum()), "source": "test"}


def test_calibrators_round_trip_and_refuse_nonsense() -> None:
    labels, scores = _overconfident(500, seed=3)
    for method in ("platt", "isotonic", "none"):
        calibrator = fit_calibrator(method, labels, scores, "oof")
        again = Calibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
        assert again == calibrator
        np.testing.assert_array_equal(again.apply(scores), calibrator.apply(scores))
    np.testing.assert_array_equal(IDENTITY.apply(scores), scores)
    with pytest.raises(ValueError, match="one class"):
        fit_calibrator("platt", [True, True], [0.2, 0.9])
    with pytest.raises(ValueError, match="method"):
        Calibrator.from_dict({"method": "magic"})
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibrator("isotonic", knots_x=(0.0, 1.0), knots_y=(0.9, 0.1))


@pytest.fixture(scope="module")
def calibrated_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained bundle, and the same weights with a steep Platt calibrator."""
    plain = tmp_path_factory.mktemp("plain")
    bundle = init_bundle(plain, backbone="small", input_size=48, num_slices=24, seed=4)
    models = bundle.build_models()
    manifest = {k: v for k, v in bundle.manifest.items() if k not in ("files", "folds")}
    stack = Calibrator("platt", slope=2.0, intercept=-1.0, fitted_on={"source": "test"})
    slices = Calibrator("platt", slope=0.5, intercept=0.7, fitted_on={"source": "test"})
    manifest["calibration"] = {"stack": stack.to_dict(), "slice": slices.to_dict()}
    calibrated = tmp_path_factory.mktemp("calibrated")
    write_bundle(calibrated, manifest, models)
    return plain, calibrated


def test_the_calibrator_round_trips_through_the_bundle(
    calibrated_bundle: tuple[Path, Path],
) -> None:
    plain, calibrated = calibrated_bundle
    assert load_bundle(plain).calibrators() == {"stack": IDENTITY, "slice": IDENTITY}
    loaded = load_bundle(calibrated).calibrators()
    assert loaded["stack"] == Calibrator("platt", 2.0, -1.0, fitted_on={"source": "test"})
    assert loaded["slice"].slope == 0.5 and loaded["slice"].intercept == 0.7
    # A calibrator is part of the hashed manifest: an edited one is refused, not applied.
    manifest = json.loads((calibrated / "manifest.json").read_text())
    manifest["calibration"]["stack"]["method"] = "magic"
    broken = calibrated.parent / "broken"
    broken.mkdir()
    for f in calibrated.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="calibration 'stack'"):
        load_bundle(broken)


def test_the_predictor_applies_the_calibrator_to_stack_and_slices(
    calibrated_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    plain, calibrated = calibrated_bundle
    files = write_study(
        generate_study(6, StudyParams(positive=True, n_slices=16, matrix=96)), tmp_path
    ).axial.paths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedBundleWarning)
        raw = Predictor.load(plain).predict(files)
        cal = Predictor.load(calibrated).predict(files)
    assert raw.raw_stack_probability == pytest.approx(raw.stack_probability)
    assert cal.raw_stack_probability == pytest.approx(raw.stack_probability, abs=1e-6)
    z = np.log(raw.stack_probability / (1 - raw.stack_probability))
    assert cal.stack_probability == pytest.approx(1 / (1 + np.exp(-(2.0 * z - 1.0))), abs=1e-6)
    assert cal.slice_probabilities.keys() == raw.slice_probabilities.keys()
    for sop, p in raw.slice_probabilities.items():
        z = np.log(p / (1 - p))
        expected = 1 / (1 + np.exp(-(0.5 * z + 0.7)))
        assert cal.slice_probabilities[sop] == pytest.approx(expected, abs=1e-5)
        assert cal.raw_slice_probabilities[sop] == pytest.approx(p, abs=1e-6)
    # The decision uses the calibrated probability.
    assert cal.positive == (cal.stack_probability >= cal.thresholds["stack"]["value"])
