"""The predictor and ``triage-model predict``: one series in, probabilities out."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from model.bundle import init_bundle
from model.cli import main
from model.predict import Prediction, Predictor, UntrainedBundleWarning
from model.synthetic import StudyParams, generate_study, write_dataset, write_study
from model.training.evaluate import score


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    init_bundle(out, backbone="small", input_size=64, num_slices=24, folds=2, seed=1)
    return out


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[str]]:
    root = tmp_path_factory.mktemp("study")
    written = write_study(
        generate_study(5, StudyParams(positive=True, n_slices=20, matrix=128)), root
    )
    axial = written.axial
    return axial.paths[0].parent, list(axial.paths), list(axial.sop_instance_uids)


@pytest.fixture(scope="module")
def predictor(bundle_dir: Path) -> Predictor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedBundleWarning)
        return Predictor.load(bundle_dir, batch_size=8)


def test_prediction_has_probabilities_per_sop_and_timings(
    predictor: Predictor, series: tuple[Path, list[Path], list[str]]
) -> None:
    _, files, uids = series
    result = predictor.predict(files)
    assert isinstance(result, Prediction)
    assert 0.0 < result.stack_probability < 1.0
    assert result.stack_probability == pytest.approx(
        sum(result.fold_stack_probabilities) / 2, abs=1e-7
    )
    assert len(result.fold_stack_probabilities) == 2
    assert 0 < result.slices_used <= 24
    assert set(result.slice_probabilities) == set(result.sop_instance_uids)
    assert set(result.sop_instance_uids) <= set(uids)
    # Cranial first: the used slices keep the series' head-to-foot order.
    assert result.sop_instance_uids == sorted(result.sop_instance_uids, key=uids.index)
    assert all(0.0 < p < 1.0 for p in result.slice_probabilities.values())
    assert set(result.timings) == {"read", "preprocess", "cnn", "sequence", "total"}
    assert result.timings["total"] >= result.timings["cnn"] > 0
    assert result.bundle["trained"] is False
    assert result.bundle["sha256"] == predictor.bundle.manifest_sha256
    assert result.thresholds["stack"]["value"] == 0.5
    data = json.loads(json.dumps(result.to_dict()))
    assert data["positive"] == (result.stack_probability >= 0.5)
    # The headers the predictor read travel with the prediction (for the report), but
    # not into its JSON.
    assert "headers" not in data
    assert sorted(str(h.SOPInstanceUID) for h in result.headers) == sorted(uids)


def test_prediction_is_deterministic_across_calls_loads_and_batch_sizes(
    predictor: Predictor, bundle_dir: Path, series: tuple[Path, list[Path], list[str]]
) -> None:
    _, files, _ = series
    first = predictor.predict(files)
    second = predictor.predict(files)
    assert first.stack_probability == second.stack_probability
    assert first.slice_probabilities == second.slice_probabilities
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedBundleWarning)
        other = Predictor.load(bundle_dir, batch_size=3)
    third = other.predict(files)
    assert third.stack_probability == pytest.approx(first.stack_probability, abs=1e-6)
    for uid, p in first.slice_probabilities.items():
        assert third.slice_probabilities[uid] == pytest.approx(p, abs=1e-6)


def test_untrained_bundle_warns(bundle_dir: Path) -> None:
    with pytest.warns(UntrainedBundleWarning, match="untrained weights"):
        Predictor.load(bundle_dir)


def test_bfloat16_is_close_to_float32(
    predictor: Predictor, bundle_dir: Path, series: tuple[Path, list[Path], list[str]]
) -> None:
    _, files, _ = series
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedBundleWarning)
        reduced = Predictor.load(bundle_dir, precision="bfloat16")
    result = reduced.predict(files)
    assert result.precision == "bfloat16"
    assert abs(result.stack_probability - predictor.predict(files).stack_probability) < 0.01


def test_non_finite_outputs_fail_at_load_and_per_study_never_as_a_probability(
    bundle_dir: Path, series: tuple[Path, list[Path], list[str]]
) -> None:
    # What a backend whose kernels mishandle a precision gives (XLA's CPU compiler in
    # jaxlib 0.11, bfloat16): NaN, which compares below every threshold, so a study
    # would be reported negative. A NaN weight stands in for the broken kernel here.
    import numpy as np

    from model.bundle import load_bundle
    from model.predict import PredictorError

    bundle = load_bundle(bundle_dir)
    models = bundle.build_models("float32")
    predictor = Predictor(bundle, models, "float32", batch_size=8)
    predictor.warmup()
    _, files, _ = series
    assert 0.0 < predictor.predict(files).stack_probability < 1.0
    encoding = models[1][0].get_layer("encoding")
    encoding.bias.assign(np.full(encoding.bias.shape, np.nan, np.float32))
    with pytest.raises(PredictorError, match="non-finite outputs in float32"):
        predictor.predict(files)
    with pytest.raises(PredictorError, match="run it in float32"):
        Predictor(bundle, models, "float32", batch_size=8).warmup()


def test_a_dead_decoding_process_fails_one_series_and_the_next_gets_new_ones(
    bundle_dir: Path, tmp_path: Path
) -> None:
    import os
    import signal

    from model.predict import PredictorError
    from model.synthetic import WriteOptions

    phantom = generate_study(5, StudyParams(positive=True, n_slices=20, matrix=128))
    written = write_study(phantom, tmp_path, WriteOptions(transfer_syntax="jpeg-ls"))
    files = list(written.axial.paths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedBundleWarning)
        predictor = Predictor.load(bundle_dir, batch_size=8, threads=2)
    first = predictor.predict(files)
    pool = predictor._decoders
    assert pool is not None and pool._processes  # compressed: decoded in processes
    for pid in list(pool._processes):
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(PredictorError, match="decoding the pixel data died"):
        predictor.predict(files)
    again = predictor.predict(files)
    assert predictor._decoders is not pool
    assert again.stack_probability == first.stack_probability


def test_cli_predict_json(
    bundle_dir: Path,
    series: tuple[Path, list[Path], list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, _, uids = series
    assert main(["predict", "--bundle", str(bundle_dir), str(folder), "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert 0.0 < data["stack_probability"] < 1.0
    assert set(data["slice_probabilities"]) <= set(uids)
    assert "untrained" in captured.err
    assert main(["predict", "--bundle", str(bundle_dir), str(folder)]) == 0
    text = capsys.readouterr().out
    assert "study probability" in text and "threshold 0.500" in text


def test_cli_predict_errors_are_one_line_and_exit_2(
    bundle_dir: Path,
    tmp_path: Path,
    series: tuple[Path, list[Path], list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, _, _ = series
    assert main(["predict", "--bundle", str(bundle_dir), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("triage-model predict: error:") and "does not exist" in err
    assert "\n" not in err

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "note.txt").write_text("not DICOM")
    assert main(["predict", "--bundle", str(bundle_dir), str(junk)]) == 2
    assert capsys.readouterr().err.strip().count("error:") == 1

    assert main(["predict", "--bundle", str(tmp_path / "nobundle"), str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bundle folder does not exist" in err and "\n" not in err


def test_evaluation_keeps_the_scores_but_not_each_series_headers(
    predictor: Predictor, tmp_path: Path
) -> None:
    # Evaluation holds every prediction until the end; with their headers (~3 MB per
    # 96-slice series) a few hundred would take gigabytes.
    write_dataset(tmp_path, 2, seed=4, n_slices=20, matrix=128, vary_storage=False)
    scored = score(predictor, tmp_path, tmp_path / "train.csv")
    assert len(scored.predictions) == 2
    assert all(p.headers == [] and p.slice_probabilities for p in scored.predictions.values())
