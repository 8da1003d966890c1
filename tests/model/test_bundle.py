"""The weight bundle: round trip, verification of every file, clear errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.bundle import (
    FORMAT_VERSION,
    MANIFEST,
    BundleError,
    bundle_sha256,
    init_bundle,
    load_bundle,
    write_bundle,
)
from model.network import NetworkConfig, build_networks
from model.preprocess import PreprocessConfig

CONFIG = NetworkConfig(backbone="small", input_size=64, num_slices=16, stack_head="attention")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    init_bundle(out, backbone="small", input_size=64, num_slices=16, folds=2, seed=3)
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_manifest_records_configs_thresholds_versions_and_hashes(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["trained"] is False
    assert manifest["thresholds"]["stack"] == {"value": 0.5, "provenance": "untrained default"}
    assert PreprocessConfig.from_dict(manifest["preprocess"]).input_size == 64
    assert NetworkConfig.from_dict(manifest["network"]).num_slices == 16
    assert set(manifest["packages"]) >= {"tensorflow", "keras", "numpy", "pydicom", "project"}
    assert manifest["created"].endswith("+00:00")
    assert [f["fold"] for f in manifest["folds"]] == [0, 1]
    assert sorted(manifest["files"]) == sorted(
        [f"fold{k}_{part}.weights.h5" for k in (0, 1) for part in ("slice_cnn", "sequence")]
    )
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest_sha256 == bundle_sha256(bundle_dir)
    assert not bundle.trained


def test_round_trip_gives_identical_weights_and_outputs(tmp_path: Path) -> None:
    cnn, sequence = build_networks(CONFIG, seed=11)
    fields = {
        "name": "test",
        "version": "1.2",
        "trained": True,
        "preprocess": PreprocessConfig(num_slices=16, input_size=64).to_dict(),
        "network": CONFIG.to_dict(),
        "thresholds": {
            "stack": {"value": 0.41, "provenance": "Youden on out-of-fold predictions"},
            "slice": {"value": 0.33, "provenance": "Youden on out-of-fold predictions"},
        },
        "training": {"studies": 12},
        "metrics": {"auc": 0.9},
    }
    bundle = write_bundle(tmp_path / "b", fields, [(cnn, sequence)])
    assert bundle.thresholds["stack"].value == pytest.approx(0.41)
    assert bundle.manifest["metrics"] == {"auc": 0.9}
    [(cnn2, sequence2)] = load_bundle(tmp_path / "b").build_models()
    for a, b in zip(
        cnn.get_weights() + sequence.get_weights(),
        cnn2.get_weights() + sequence2.get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    np.testing.assert_array_equal(
        np.asarray(cnn(x, training=False)), np.asarray(cnn2(x, training=False))
    )


def test_tampered_weights_file_is_named(bundle_dir: Path, tmp_path: Path) -> None:
    copy = _copy(bundle_dir, tmp_path / "b")
    target = copy / "fold1_sequence.weights.h5"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"^fold1_sequence\.weights\.h5: sha256 mismatch"):
        load_bundle(copy)


def test_missing_weights_file_is_named(bundle_dir: Path, tmp_path: Path) -> None:
    copy = _copy(bundle_dir, tmp_path / "b")
    (copy / "fold0_slice_cnn.weights.h5").unlink()
    with pytest.raises(BundleError, match=r"^fold0_slice_cnn\.weights\.h5: listed in the manifest"):
        load_bundle(copy)


def test_wrong_format_version_and_missing_manifest(bundle_dir: Path, tmp_path: Path) -> None:
    copy = _copy(bundle_dir, tmp_path / "b")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["format_version"] = 2
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version 2 is not supported"):
        load_bundle(copy)
    (copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        load_bundle(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


def test_file_names_cannot_leave_the_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    copy = _copy(bundle_dir, tmp_path / "b")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"]["../outside.h5"] = "0" * 64
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"invalid file name '\.\./outside\.h5'"):
        load_bundle(copy)


def test_weights_that_do_not_fit_the_manifest_network_are_named(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """A manifest edited to another shape (hashes still match) fails at weight loading."""
    copy = _copy(bundle_dir, tmp_path / "b")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["network"]["encoding_dim"] = 32
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"fold0_slice_cnn\.weights\.h5: cannot be loaded"):
        load_bundle(copy).build_models()


def test_init_bundle_cli_writes_an_untrained_bundle(tmp_path: Path) -> None:
    from model.cli import main

    out = tmp_path / "cli"
    code = main(
        [
            "init-bundle",
            "--backbone",
            "small",
            "--out",
            str(out),
            "--input-size",
            "64",
            "--num-slices",
            "16",
            "--channels",
            "1",
            "--stack-head",
            "attention",
        ]
    )
    assert code == 0
    bundle = load_bundle(out)
    assert bundle.trained is False
    assert bundle.network_config().channels == 1
    assert bundle.network_config().stack_head == "attention"
    assert bundle.thresholds["slice"].provenance == "untrained default"


def test_the_shipped_demo_bundle_is_trained_labelled_and_its_report_matches_the_readme() -> None:
    from model.bundle import load_bundle

    root = Path(__file__).parents[2]
    demo = root / "model" / "bundles" / "demo"
    bundle = load_bundle(demo)  # verifies every file's sha256
    assert bundle.manifest["trained"] is True
    assert "NOT FOR CLINICAL USE" in bundle.manifest["description"]
    assert bundle.manifest["preprocess"]["crop"] is True
    # Calibrated, and its thresholds chosen on the calibrated probabilities.
    calibrators = bundle.calibrators()
    assert {c.method for c in calibrators.values()} == {"platt"}
    assert "calibrated" in bundle.thresholds["stack"].provenance
    report = json.loads((demo / "report" / "report.json").read_text())
    assert report["bundle"]["sha256"] == bundle.manifest_sha256
    # Held out on at least 200 realistic studies, half positive; easy and hard beside it,
    # each with the raw outputs' figures beside the calibrated ones.
    stack = report["levels"]["stack"]
    assert stack["n"] >= 200 and stack["n_positive"] * 2 == stack["n"]
    for name in ("easy", "hard"):
        other = json.loads((demo / "report" / name / "report.json").read_text())
        assert other["bundle"]["sha256"] == bundle.manifest_sha256
        assert "levels_raw" in other
    assert report["levels_raw"]["stack"]["ece"] is not None
    auc = stack["roc_auc"]
    readme = (root / "README.md").read_text()
    figure = f"{auc['estimate']:.3f} (95% CI {auc['low']:.3f}–{auc['high']:.3f})"
    assert figure in readme, figure
    assert f"ECE {stack['ece']:.3f}" in readme
