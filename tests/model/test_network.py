"""The slice CNN and the sequence model: shapes, masking, channels, offline ImageNet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from model.network import (
    ENCODING_LAYER,
    IMAGENET_WEIGHTS_FILE,
    NetworkConfig,
    NetworkError,
    build_sequence_model,
    build_slice_cnn,
    dtype_policy,
    slice_encoder,
)


def _first_kernel(model: object) -> np.ndarray:
    import keras

    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    return conv.get_weights()[0]


def _images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, channels), dtype=np.float32)


def test_small_slice_cnn_has_the_reference_head_and_an_encoder_view() -> None:
    cnn = build_slice_cnn("small", 64, 3, None, encoding_dim=64, seed=0)
    names = [layer.name for layer in cnn.layers]
    assert names[-5:] == ["pool", "dense", "dropout", ENCODING_LAYER, "slice"]
    assert cnn.get_layer("dense").units == 512
    assert cnn.get_layer("dropout").rate == pytest.approx(0.2)
    assert cnn.get_layer("slice").activation.__name__ == "sigmoid"
    x = _images(3, 64, 3)
    probabilities = np.asarray(cnn(x, training=False))
    assert probabilities.shape == (3, 1)
    assert ((probabilities > 0) & (probabilities < 1)).all()
    encoder = slice_encoder(cnn)
    assert np.asarray(encoder(x, training=False)).shape == (3, 64)
    # The view shares weights: its encoding is what the classifier's last layer reads.
    dense = cnn.get_layer("slice")
    kernel, bias = dense.get_weights()
    logits = np.asarray(encoder(x, training=False)) @ kernel + bias
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), probabilities, rtol=1e-4, atol=1e-5)


def test_seeded_builds_repeat() -> None:
    a = build_slice_cnn("small", 64, 3, None, seed=5)
    b = build_slice_cnn("small", 64, 3, None, seed=5)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_single_channel_input() -> None:
    cnn = build_slice_cnn("small", 64, 1, None, seed=0)
    assert cnn.input_shape == (None, 64, 64, 1)
    assert np.asarray(cnn(_images(2, 64, 1), training=False)).shape == (2, 1)


def test_inception_resnet_v2_builds_and_runs_one_slice_at_386() -> None:
    cnn = build_slice_cnn("inception_resnet_v2", 386, 3, None, seed=0)
    assert cnn.input_shape == (None, 386, 386, 3)
    assert cnn.get_layer("inception_resnet_v2").output.shape[1:] == (10, 10, 1536)
    out = np.asarray(slice_encoder(cnn)(_images(1, 386, 3), training=False))
    assert out.shape == (1, 64)
    assert np.isfinite(out).all()


def test_bfloat16_policy_runs_the_backbone_in_bfloat16_and_the_head_in_float32() -> None:
    with dtype_policy("bfloat16"):
        cnn = build_slice_cnn("small", 64, 3, None, seed=0)
    import keras

    assert keras.config.dtype_policy().name == "float32"  # restored after the build
    assert cnn.get_layer("small").get_layer("conv0").compute_dtype == "bfloat16"
    assert cnn.get_layer(ENCODING_LAYER).compute_dtype == "float32"
    assert np.asarray(slice_encoder(cnn)(_images(1, 64, 3))).dtype == np.float32


@pytest.mark.parametrize("head", ["reference", "attention", "top_slices"])
def test_sequence_outputs_ignore_padding_slots(head: str) -> None:
    model = build_sequence_model(num_slices=20, encoding_dim=16, stack_head=head, seed=0)
    rng = np.random.default_rng(1)
    encodings = rng.normal(size=(2, 20, 16)).astype(np.float32)
    mask = np.zeros((2, 20), bool)
    mask[0, :12] = True
    mask[1, :20] = True
    out = model({"encodings": encodings, "mask": mask}, training=False)
    assert tuple(out["slice"].shape) == (2, 20)
    assert tuple(out["stack"].shape) == (2, 1)
    slices = np.asarray(out["slice"])
    assert (slices[0, 12:] == 0).all()
    assert (slices[0, :12] > 0).all()

    changed = encodings.copy()
    changed[0, 12:] = 50 * rng.normal(size=(8, 16))
    again = model({"encodings": changed, "mask": mask}, training=False)
    np.testing.assert_allclose(np.asarray(again["stack"]), np.asarray(out["stack"]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(again["slice"]), slices, atol=1e-6)


def test_attention_head_is_position_invariant_and_reference_is_not() -> None:
    """Shifting the chest down the slots moves the reference head, not the attention head."""
    rng = np.random.default_rng(2)
    encodings = np.zeros((1, 24, 16), np.float32)
    encodings[0, :10] = rng.normal(size=(10, 16))
    mask = np.zeros((1, 24), bool)
    mask[0, :10] = True
    # The BiLSTM reads the sequence, not its slot index, so shifting it only moves the
    # outputs; attention pooling then gives the same stack probability.
    shifted = np.roll(encodings, 8, axis=1)
    shifted_mask = np.roll(mask, 8, axis=1)
    stacks = {}
    for head in ("attention", "reference"):
        model = build_sequence_model(24, 16, head, seed=3)
        # A non-zero bias on the reference head's per-slot weights makes position matter.
        a = model({"encodings": encodings, "mask": mask}, training=False)["stack"]
        b = model({"encodings": shifted, "mask": shifted_mask}, training=False)["stack"]
        stacks[head] = abs(float(np.asarray(a)[0, 0]) - float(np.asarray(b)[0, 0]))
    assert stacks["attention"] < 1e-5
    assert stacks["reference"] > 1e-5


def test_top_slices_head_is_a_logistic_model_of_the_three_highest_slices() -> None:
    """The stack output is sigmoid(w · logit(top three slice probabilities) + b), wherever
    in the slots those slices lie."""
    model = build_sequence_model(24, 16, "top_slices", seed=4)
    rng = np.random.default_rng(5)
    encodings = np.zeros((1, 24, 16), np.float32)
    encodings[0, :10] = rng.normal(size=(10, 16))
    mask = np.zeros((1, 24), bool)
    mask[0, :10] = True
    out = model({"encodings": encodings, "mask": mask}, training=False)
    slices = np.asarray(out["slice"])[0]
    top = np.sort(slices)[::-1][:3].astype(np.float64)
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer("stack").get_weights())
    z = float(np.log(top / (1 - top)) @ kernel[:, 0] + bias[0])
    assert float(np.asarray(out["stack"])[0, 0]) == pytest.approx(1 / (1 + np.exp(-z)), abs=1e-5)
    shifted = model(
        {"encodings": np.roll(encodings, 8, axis=1), "mask": np.roll(mask, 8, axis=1)},
        training=False,
    )
    assert abs(float(np.asarray(shifted["stack"])[0, 0] - np.asarray(out["stack"])[0, 0])) < 1e-5


def test_top_slices_stack_only_rises_with_its_strongest_slices() -> None:
    """Trained on studies whose strongest slices mark them negative, the head's weights
    stay non-negative: a study is positive if any slice is, so a surer slice may never
    lower the stack probability."""
    model = build_sequence_model(24, 16, "top_slices", seed=4)
    kernel = np.asarray(model.get_layer("stack").get_weights()[0])
    assert np.all(kernel > 0)
    rng = np.random.default_rng(6)
    encodings = rng.normal(size=(64, 24, 16)).astype(np.float32)
    mask = np.ones((64, 24), bool)
    # Inverted targets: the studies with the largest encodings are called negative.
    strength = encodings.max(axis=(1, 2))
    stack = (strength < np.median(strength)).astype(np.float32)[:, None]
    model.compile(keras.optimizers.Adam(0.05), loss={"stack": "binary_crossentropy"})
    model.fit({"encodings": encodings, "mask": mask}, {"stack": stack}, epochs=15, verbose=0)
    kernel = np.asarray(model.get_layer("stack").get_weights()[0])
    assert np.all(kernel >= 0), kernel


def test_unknown_backbone_and_head_are_clear_errors() -> None:
    with pytest.raises(NetworkError, match="unknown backbone 'resnet'"):
        build_slice_cnn("resnet", 64, 3, None)
    with pytest.raises(NetworkError, match="unknown stack head 'mean'"):
        build_sequence_model(16, 8, "mean")
    with pytest.raises(NetworkError, match="channels must be 1 or 3"):
        NetworkConfig(channels=2)
    assert NetworkConfig.from_dict(NetworkConfig().to_dict()) == NetworkConfig()


def test_missing_imagenet_weights_error_names_the_file_and_place(tmp_path: Path) -> None:
    # KERAS_HOME is read when Keras is imported, so check in a fresh interpreter.
    code = (
        "from model.network import build_slice_cnn, NetworkError\n"
        "try:\n"
        "    build_slice_cnn('inception_resnet_v2', 96, 3, 'imagenet')\n"
        "except NetworkError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"KERAS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    expected = tmp_path / "models" / IMAGENET_WEIGHTS_FILE
    assert str(expected) in out.stdout, out.stdout + out.stderr
    assert "place" in out.stdout
    assert not expected.exists()


def test_imagenet_weights_from_cache_adapt_to_one_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached weights file loads offline; a 1-channel model sums the first kernel."""
    import keras

    # Stand-in for the ImageNet file: a seeded backbone saved in the same legacy format.
    keras.utils.set_random_seed(7)
    source = keras.applications.InceptionResNetV2(
        include_top=False, weights=None, input_shape=(75, 75, 3)
    )
    cache = tmp_path / "models"
    cache.mkdir()
    # The ImageNet file is in the legacy Keras 2 .h5 layout, which load_weights reads by
    # its suffix; write the stand-in the same way.
    legacy = cache / IMAGENET_WEIGHTS_FILE
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(legacy, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, source)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    three = build_slice_cnn("inception_resnet_v2", 75, 3, "imagenet")
    one = build_slice_cnn("inception_resnet_v2", 75, 1, "imagenet")
    first_src = _first_kernel(source)
    np.testing.assert_array_equal(_first_kernel(three.get_layer("inception_resnet_v2")), first_src)
    first_one = _first_kernel(one.get_layer("inception_resnet_v2"))
    np.testing.assert_allclose(first_one, first_src.sum(axis=2, keepdims=True), rtol=1e-6)
    # A grey image as one channel gives what three equal channels give.
    grey = _images(1, 75, 1)
    a = np.asarray(one.get_layer("inception_resnet_v2")(grey * 2 - 1, training=False))
    b = np.asarray(
        three.get_layer("inception_resnet_v2")(np.repeat(grey, 3, axis=-1) * 2 - 1, training=False)
    )
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
