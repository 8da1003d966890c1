"""Heat maps (Grad-CAM, sharpened by the input gradient): the geometry back to the source
slice, and that they find a lesion."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from scipy import ndimage as ndi

from model.explain import (
    Explainer,
    ExplainError,
    GradCAM,
    feature_geometry,
    feature_to_input,
    input_to_source,
    sharpened,
    source_coordinates,
)
from model.network import build_slice_cnn
from model.predict import Prediction, Predictor
from model.preprocess import (
    CTVolume,
    FieldOfView,
    PreprocessConfig,
    PreprocessedSeries,
    preprocess_series,
    preprocess_volume,
)
from model.synthetic import (
    Phantom,
    StudyParams,
    Tissue,
    WrittenSeries,
    generate_study,
    write_study,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "model" / "bundles" / "demo"


def _backbone(cnn: Any) -> Any:
    import keras

    return next(layer for layer in cnn.layers if isinstance(layer, keras.Model))


def test_feature_geometry_is_where_each_cell_sees_on_the_input() -> None:
    """The cells' receptive-field centres, against the impulse response of a linear copy."""
    import keras
    import tensorflow as tf

    cnn = build_slice_cnn("small", 96, 1, None, seed=0)
    backbone = _backbone(cnn)
    geometry = feature_geometry(backbone)
    assert (geometry.stride, geometry.offset, geometry.cells) == (16.0, 15.0, 6)
    # Symmetric positive kernels and identity batch norm make the backbone linear with a
    # symmetric receptive field, so the centroid of a cell's input gradient is its centre.
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel = np.ones(layer.kernel.shape, np.float32)
            layer.set_weights([kernel])
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [
                    np.ones(w.shape, np.float32) if i in (0, 3) else np.zeros(w.shape, np.float32)
                    for i, w in enumerate(layer.get_weights())
                ]
            )
    image = tf.convert_to_tensor(np.ones((1, 96, 96, 1), np.float32))
    rows = np.arange(96, dtype=np.float64)
    # Cells whose receptive field (33 pixels) lies inside the image, away from padding.
    for cell in (2, 3):
        with tf.GradientTape() as tape:
            tape.watch(image)
            response = tf.reduce_sum(backbone(image, training=False)[0, cell, cell])
        weight = np.asarray(tape.gradient(response, image))[0, :, :, 0].sum(axis=1)
        centre = float((weight * rows).sum() / weight.sum())
        assert centre == pytest.approx(geometry.stride * cell + geometry.offset, abs=1e-3)

    compact = feature_geometry(_backbone(build_slice_cnn("compact", 192, 3, None, seed=0)))
    assert (compact.stride, compact.offset, compact.cells) == (16.0, 15.0, 12)
    # InceptionResNetV2's stem and reduction blocks pad "valid": derived by hand, 32j + 37
    # (input pixel 37 is the centre of its smallest, 75-pixel input: one cell).
    inception = build_slice_cnn("inception_resnet_v2", 75, 3, None, seed=0)
    irv2 = feature_geometry(_backbone(inception))
    assert (irv2.stride, irv2.offset, irv2.cells) == (32.0, 37.0, 1)


def test_grad_cam_runs_on_the_inception_backbone_last_block() -> None:
    """InceptionResNetV2's last block (conv_7b) at 107 px is a 2 x 2 grid."""
    cnn = build_slice_cnn("inception_resnet_v2", 107, 3, None, seed=0)
    images = np.random.default_rng(1).random((2, 107, 107, 3), dtype=np.float32)
    cam = GradCAM(cnn)
    maps, probabilities = cam(images)
    assert maps.shape == (2, 2, 2) and np.isfinite(maps).all() and (maps >= 0).all()
    assert (cam.geometry.stride, cam.geometry.offset) == (32.0, 37.0)
    expected = np.asarray(cnn.predict(images, verbose=0))[:, 0]
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)


def _volume(phantom_seed: int, marker: tuple[int, int, int] | None) -> CTVolume:
    phantom = generate_study(phantom_seed, StudyParams(positive=False, n_slices=16, matrix=256))
    hu = phantom.hu.astype(np.float32)
    if marker is not None:
        k, r, c = marker
        hu[k, r - 3 : r + 4, c - 3 : c + 4] = 300.0
    n = len(hu)
    return CTVolume(
        hu=hu,
        positions_mm=-3.0 * np.arange(n, dtype=np.float64),
        pixel_spacing=(phantom.geometry.pixel_spacing,) * 2,
        sop_instance_uids=[f"1.2.3.{k + 1}" for k in range(n)],
        series_instance_uid="1.2.3",
        study_instance_uid="1.2",
    )


def test_a_map_on_the_input_goes_back_to_the_source_pixels_it_came_from() -> None:
    """A marker in a lung, found in the model input and put back: at the marker."""
    phantom = generate_study(11, StudyParams(positive=False, n_slices=16, matrix=256))
    k = 8
    # The lung pixel deepest inside: the cavity mask keeps the whole marker.
    depth = ndi.distance_transform_edt(phantom.tissue[k] == Tissue.LUNG)
    r, c = (int(v) for v in np.unravel_index(int(np.argmax(depth)), depth.shape))
    config = PreprocessConfig(num_slices=16, input_size=96, channels=1, crop=True)
    plain = preprocess_volume(_volume(11, None), config)
    marked = preprocess_volume(_volume(11, (k, r, c)), config)
    fov = marked.field_of_view
    assert fov is not None and fov == plain.field_of_view
    # A real crop: the mapping has an offset and a scale to get right.
    assert (fov.top, fov.left) != (0, 0) and fov.height < 256
    difference = marked.volume[k, :, :, 0] - plain.volume[k, :, :, 0]
    assert difference.max() > 0.2
    back = input_to_source(difference, fov)
    assert back.shape == (256, 256)
    peak = np.unravel_index(int(np.argmax(back)), back.shape)
    assert abs(peak[0] - r) <= 1 and abs(peak[1] - c) <= 1
    weights = np.clip(back, 0, None)
    rows, cols = np.indices(back.shape)
    centroid = ((weights * rows).sum() / weights.sum(), (weights * cols).sum() / weights.sum())
    assert centroid == pytest.approx((r, c), abs=0.5)


def test_source_coordinates_invert_the_resize_and_blank_outside_the_crop() -> None:
    fov = FieldOfView(top=10, left=20, height=40, width=40, rows=64, columns=80)
    rows, columns = source_coordinates(fov, 20)
    # Crop pixels 0 and 1 share input pixel 0, whose centre lies between them.
    assert rows[10] == pytest.approx(-0.25) and rows[11] == pytest.approx(0.25)
    assert rows[49] == pytest.approx(19.25)
    assert np.isnan(rows[:10]).all() and np.isnan(rows[50:]).all()
    assert np.isnan(columns[:20]).all() and np.isnan(columns[60:]).all()
    ones = input_to_source(np.ones((20, 20)), fov)
    assert ones[10:50, 20:60].min() == pytest.approx(1.0)
    assert ones.sum() == pytest.approx(40 * 40)


def _blobs(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise images, half with a bright disc at a random place; returns images, labels, centres."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.3, 0.05, (n, size, size, 1)).astype(np.float32)
    labels = (np.arange(n) % 2).astype(np.float32)
    centres = rng.integers(12, size - 12, (n, 2))
    rows, cols = np.indices((size, size))
    for i in np.flatnonzero(labels):
        disc = (rows - centres[i, 0]) ** 2 + (cols - centres[i, 1]) ** 2 <= 16
        images[i, disc, 0] = 0.9
    return np.clip(images, 0, 1), labels, centres


@pytest.mark.parametrize("pooling", ["avg", "gem"])
def test_grad_cam_of_a_trained_cnn_peaks_on_what_it_detects(pooling: str) -> None:
    """A small CNN trained here to detect a bright disc: its heat map peaks on the disc."""
    import keras

    size = 96
    cnn = build_slice_cnn("small", size, 1, None, seed=1, pooling=pooling, head_units=32)
    images, labels, _ = _blobs(512, size, seed=2)
    cnn.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    # Batch-norm statistics that settle within the 64 steps of this training.
    for layer in cnn.get_layer("small").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    cnn.fit(images, labels, batch_size=32, epochs=4, verbose=0)
    test_images, test_labels, centres = _blobs(40, size, seed=3)
    positives = np.flatnonzero(test_labels)
    cam = GradCAM(cnn)
    maps, probabilities = cam(test_images[positives])
    assert probabilities.mean() > 0.8, "the CNN did not learn the task; nothing to explain"
    geometry = cam.geometry
    hits = 0
    for feature_map, centre in zip(maps, centres[positives], strict=True):
        cell = np.unravel_index(int(np.argmax(feature_map)), feature_map.shape)
        peak = geometry.stride * np.asarray(cell) + geometry.offset
        # The feature grid is 16 pixels coarse: the peak cell's centre is within 12
        # pixels (3/4 of a cell) of the disc when it is the cell the disc lies in.
        hits += float(np.hypot(*(peak - centre))) <= 12.0
    assert hits >= 0.8 * len(positives), f"{hits} of {len(positives)} peaks on the disc"
    # Sharpened by the input gradient, the peak lies on the disc itself (radius 4 pixels),
    # not only in its 16-pixel cell.
    gradients = cam.input_gradient(test_images[positives])
    assert gradients.shape == (len(positives), size, size)
    inside = 0
    for feature_map, gradient, centre in zip(maps, gradients, centres[positives], strict=True):
        heat = sharpened(feature_to_input(feature_map, geometry, size), gradient)
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        inside += float(np.hypot(*(np.asarray(peak) - centre))) <= 4.0
    assert inside >= 0.8 * len(positives), f"{inside} of {len(positives)} peaks in the disc"


class DemoCase(NamedTuple):
    """The demo bundle's prediction on one easy synthetic positive."""

    predictor: Predictor
    phantom: Phantom
    axial: WrittenSeries
    series: PreprocessedSeries
    prediction: Prediction


@pytest.fixture(scope="module")
def demo_case(tmp_path_factory: pytest.TempPathFactory) -> DemoCase:
    predictor = Predictor.load(DEMO)
    phantom = generate_study(101, StudyParams(positive=True, difficulty="easy"))
    axial = write_study(phantom, tmp_path_factory.mktemp("easy")).series[0]
    series = preprocess_series(axial.paths, predictor.preprocess_config)
    return DemoCase(predictor, phantom, axial, series, predictor.predict_preprocessed(series))


def test_heat_maps_cover_the_top_k_flagged_slices_on_the_source_grid(demo_case: DemoCase) -> None:
    explainer = Explainer(demo_case.predictor.slice_cnns)
    series, probabilities = demo_case.series, demo_case.prediction.slice_probabilities
    threshold = sorted(probabilities.values())[-5]
    explanation = explainer.explain(series, probabilities, top_k=3, threshold=threshold)
    assert len(explanation.heatmaps) == 3
    assert explanation.method == "grad-cam-x-gradient"
    expected = sorted(probabilities, key=lambda uid: probabilities[uid], reverse=True)[:3]
    assert [h.sop_instance_uid for h in explanation.heatmaps] == expected
    fov = series.field_of_view
    assert fov is not None
    for heat in explanation.heatmaps:
        assert heat.heatmap.shape == demo_case.phantom.hu.shape[1:]
        assert heat.heatmap.min() >= 0.0 and heat.heatmap.max() == pytest.approx(1.0, abs=0.02)
        assert heat.input_heatmap.max() == pytest.approx(1.0)
        outside = np.ones(heat.heatmap.shape, bool)
        outside[fov.top : fov.top + fov.height, fov.left : fov.left + fov.width] = False
        assert not heat.heatmap[outside].any()
    # The threshold bounds as well as top_k: five at or above it, no more.
    everything = explainer.explain(series, probabilities, top_k=50, threshold=threshold)
    assert len(everything.heatmaps) == 5
    with pytest.raises(ExplainError, match="field_of_view"):
        explainer.explain(replace(series, field_of_view=None), probabilities)
    # Grad-CAM alone (the benchmark's comparison) covers the same slices.
    plain = Explainer(demo_case.predictor.slice_cnns, method="grad-cam")
    alone = plain.explain(series, probabilities, top_k=3, threshold=threshold)
    assert alone.method == "grad-cam"
    assert [h.sop_instance_uid for h in alone.heatmaps] == expected
    with pytest.raises(ExplainError, match="method must be one of"):
        Explainer(demo_case.predictor.slice_cnns, method="occlusion")


def test_the_heat_map_peaks_on_an_embolus_on_most_flagged_slices(demo_case: DemoCase) -> None:
    """The demo bundle's own flagged slices of a synthetic positive: the generator knows
    every embolus voxel, so each peak is measured against them (3-D, 5 mm, as
    benchmarks/heatmap_localisation.py reports over many studies)."""
    predictor, series = demo_case.predictor, demo_case.series
    threshold = float(predictor.bundle.thresholds["slice"].value)
    explanation = Explainer(predictor.slice_cnns).explain(
        series, demo_case.prediction.slice_probabilities, top_k=8, threshold=threshold
    )
    assert len(explanation.heatmaps) >= 4, "too few flagged slices to measure"
    distance = demo_case.phantom.embolus_distance_mm()
    index = {uid: k for k, uid in enumerate(demo_case.axial.sop_instance_uids)}
    found = [float(distance[(index[h.sop_instance_uid], *h.peak)]) for h in explanation.heatmaps]
    hits = sum(d <= 5.0 for d in found)
    assert hits > len(found) / 2, f"peaks within 5 mm of an embolus: {hits} of {len(found)}"


def test_the_embolus_distance_is_zero_inside_and_grows_with_the_slices_away() -> None:
    phantom = generate_study(101, StudyParams(positive=True, difficulty="easy"))
    distance = phantom.embolus_distance_mm()
    assert (distance[phantom.embolus_mask] == 0).all()
    assert (distance[~phantom.embolus_mask] > 0).all()
    # One slice beyond the last embolus slice, straight along the normal: the slice spacing.
    last = int(np.flatnonzero(phantom.slice_labels)[-1])
    if last + 1 < phantom.n_slices:
        below = distance[last + 1][phantom.embolus_mask[last]]
        assert below.min() == pytest.approx(phantom.geometry.slice_thickness)
    negative = generate_study(102, StudyParams(positive=False, difficulty="easy"))
    assert np.isinf(negative.embolus_distance_mm()).all()


_BACKEND_PROBE = """
import sys
import numpy as np
from model.explain import GradCAM
from model.network import build_slice_cnn

cnn = build_slice_cnn("compact", 96, 3, None, pooling="gem")
cnn.load_weights(sys.argv[1])
images = np.load(sys.argv[2])
cam = GradCAM(cnn)
cams, probabilities = cam(images)
np.save(sys.argv[3], cams)
np.save(sys.argv[3] + "_gradient", cam.input_gradient(images))
"""


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(
            "jax",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("jax") is None,
                reason="JAX is not installed (pip install '.[jax]')",
            ),
        ),
        pytest.param(
            "torch",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("torch") is None,
                reason=(
                    "PyTorch is not installed: CI leaves it out, as its wheel pulls several "
                    "GB of CUDA libraries; benchmarks/gpu_check.sh runs it on the GPU machine"
                ),
            ),
        ),
    ],
)
def test_grad_cam_and_input_gradient_are_the_same_as_on_tensorflow(
    tmp_path: Path, backend: str
) -> None:
    cnn = build_slice_cnn("compact", 96, 3, None, seed=0, pooling="gem")
    weights, images = tmp_path / "cnn.weights.h5", tmp_path / "images.npy"
    cnn.save_weights(weights)
    batch = np.random.default_rng(0).random((3, 96, 96, 3), dtype=np.float32)
    np.save(images, batch)
    cam = GradCAM(cnn)
    reference, _ = cam(batch)
    reference_gradient = cam.input_gradient(batch)
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    out = tmp_path / backend
    run = subprocess.run(
        [sys.executable, "-c", _BACKEND_PROBE, str(weights), str(images), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    other = np.load(f"{out}.npy")
    assert reference.max() > 0
    np.testing.assert_allclose(other, reference, rtol=1e-4, atol=1e-6 * reference.max())
    other_gradient = np.load(f"{out}_gradient.npy")
    assert reference_gradient.max() > 0
    np.testing.assert_allclose(
        other_gradient, reference_gradient, rtol=1e-4, atol=1e-6 * reference_gradient.max()
    )
