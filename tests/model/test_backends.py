"""The predictor on every Keras backend: the same probabilities, and no TensorFlow off it.

Each backend runs in a subprocess of its own (Keras reads ``KERAS_BACKEND`` once, at its
import), through ``backend_probe.py``. CI installs JAX's CPU wheel, so TensorFlow against
JAX runs there. CI does not install PyTorch: its PyPI wheel pulls several GB of CUDA
libraries. The torch tests run wherever torch is importable, and
``benchmarks/gpu_check.sh`` runs the torch path on the GPU machine, which has it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from model.bundle import init_bundle
from model.synthetic import StudyParams, generate_study, write_study

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("backend_probe.py")
DEMO = ROOT / "model" / "bundles" / "demo"
TOLERANCE = 1e-4

needs_jax = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="JAX is not installed (pip install '.[jax]')"
)
needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason=(
        "PyTorch is not installed: CI leaves it out, as its wheel pulls several GB of CUDA "
        "libraries; benchmarks/gpu_check.sh checks the torch path on the GPU machine"
    ),
)


def probe(series: Path, *args: str | Path, backend: str | None = None) -> dict[str, Any]:
    """Run ``backend_probe.py`` in a fresh interpreter and return its JSON."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("KERAS_BACKEND", None)
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    out = subprocess.run(
        [sys.executable, str(PROBE), str(series), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    written = write_study(
        generate_study(5, StudyParams(positive=True, n_slices=20, matrix=128)), root
    )
    return written.axial.paths[0].parent


@pytest.fixture(scope="module")
def inception(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained InceptionResNetV2 bundle at its smallest input, two folds."""
    out = tmp_path_factory.mktemp("inception")
    init_bundle(out, backbone="inception_resnet_v2", input_size=75, num_slices=16, folds=2)
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small")
    init_bundle(out, backbone="small", input_size=32, num_slices=16, seed=3)
    return out


def assert_same(reference: dict[str, Any], other: dict[str, Any]) -> None:
    """Stack, fold and slice probabilities equal within :data:`TOLERANCE`."""
    assert other["stack"] == pytest.approx(reference["stack"], abs=TOLERANCE)
    assert other["folds"] == pytest.approx(reference["folds"], abs=TOLERANCE)
    assert other["slices"].keys() == reference["slices"].keys()
    for key in ("slices", "raw_slices"):
        for uid, value in reference[key].items():
            assert other[key][uid] == pytest.approx(value, abs=TOLERANCE), (key, uid)


def _same_on(backend: str, series: Path, inception: Path) -> None:
    reference = probe(series, DEMO, inception, backend="tensorflow")
    other = probe(series, DEMO, inception, backend=backend)
    assert [p["backend"] for p in reference["predictions"]] == ["tensorflow"] * 2
    assert [p["backend"] for p in other["predictions"]] == [backend] * 2
    for ref, oth in zip(reference["predictions"], other["predictions"], strict=True):
        # A real study: the slices of the series, probabilities that are not all alike.
        assert len(ref["slices"]) >= 4
        assert len(set(ref["slices"].values())) > 1
        assert_same(ref, oth)


@needs_jax
def test_demo_and_inception_bundles_give_the_same_probabilities_on_tensorflow_and_jax(
    series: Path, inception: Path
) -> None:
    _same_on("jax", series, inception)


@needs_torch
def test_demo_and_inception_bundles_give_the_same_probabilities_on_tensorflow_and_torch(
    series: Path, inception: Path
) -> None:
    _same_on("torch", series, inception)


def _worker_path_without_tensorflow(
    backend: str, tmp_path: Path, series: Path, small: Path
) -> None:
    config = tmp_path / "triage.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'var'}\n"
        f"model:\n  bundle: {small}\n  backend: {backend}\n  device: cpu\n"
    )
    # KERAS_BACKEND says tensorflow: the YAML's backend must win in a worker process.
    result = probe(series, "--config", config, backend="tensorflow")
    (prediction,) = result["predictions"]
    assert (prediction["backend"], prediction["device"]) == (backend, "CPU")
    assert 0.0 < prediction["stack"] < 1.0
    assert result["tensorflow"] is False


@needs_jax
def test_a_jax_worker_never_imports_tensorflow(tmp_path: Path, series: Path, small: Path) -> None:
    _worker_path_without_tensorflow("jax", tmp_path, series, small)


@needs_torch
def test_a_torch_worker_never_imports_tensorflow(tmp_path: Path, series: Path, small: Path) -> None:
    _worker_path_without_tensorflow("torch", tmp_path, series, small)


def test_the_probe_sees_tensorflow_when_the_worker_runs_on_it(
    tmp_path: Path, series: Path, small: Path
) -> None:
    # The no-TensorFlow tests above can fail: on the TensorFlow backend the probe reports it.
    config = tmp_path / "triage.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\nmodel:\n  bundle: {small}\n")
    result = probe(series, "--config", config, backend="jax")
    assert result["predictions"][0]["backend"] == "tensorflow"
    assert result["tensorflow"] is True
