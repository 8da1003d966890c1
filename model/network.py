"""The slice CNN and the slice-sequence model: the two networks of the method.

A study is read slice by slice by a 2-D CNN (:func:`build_slice_cnn`); its 64-d encoding of
each slice (the second-to-last layer, as in the authors' code) goes, in slice order, to a
bidirectional LSTM (:func:`build_sequence_model`) that outputs a probability per slice and
one for the whole stack.

Builders take every shape and hyperparameter as arguments, use the functional API, name
their models and layers, and keep input normalisation inside the graph: the CNN's input is
the preprocessed [0, 1] image and a ``Rescaling`` layer maps it to the [-1, 1] that
InceptionResNetV2 expects.

Keras, and with it its backend (TensorFlow, JAX or PyTorch; see :mod:`model.backend`), is
imported when this module is imported; the daemon imports it only in worker processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import keras
from keras import layers, ops

BACKBONES = ("inception_resnet_v2", "small", "compact")
"""Slice CNN backbones: the production InceptionResNetV2, a five-layer CNN for tests, and
an eight-layer CNN for CPU demos at 192–256 pixels (see :func:`_compact_backbone`)."""

POOLINGS = ("avg", "max", "gem")
"""How the slice CNN pools its last feature map: global average (the paper), global max,
or generalised mean with a learned exponent (GeM)."""

STACK_HEADS = ("reference", "attention", "top_slices")
"""Stack heads of the sequence model (see :func:`build_sequence_model`)."""

PRECISIONS = ("float32", "bfloat16", "float16")
"""Compute precisions of the slice CNN at inference (reduced ones are for GPUs: a CPU
runs them slower than float32, and TensorFlow's CPU kernels lack some in float16)."""

IMAGENET_WEIGHTS_FILE = "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
"""The file name keras.applications caches the notop ImageNet weights under."""

_IMAGENET_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_resnet_v2/"
    + IMAGENET_WEIGHTS_FILE
)

ENCODING_LAYER = "encoding"
"""Name of the slice CNN's encoding layer, the input of the sequence model."""


class NetworkError(ValueError):
    """A network cannot be built as asked (unknown backbone, missing weights file, ...)."""


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild both networks of a bundle.

    Parameters
    ----------
    backbone : str
        One of :data:`BACKBONES`.
    input_size : int
        Rows and columns of the CNN input.
    channels : int
        1 or 3 image channels.
    encoding_dim : int
        Size of the slice encoding read by the sequence model.
    num_slices : int
        Slots of the sequence model.
    stack_head : str
        One of :data:`STACK_HEADS`.
    pooling : str
        One of :data:`POOLINGS`.
    weights_init : str or None
        What the CNN was initialised from before training (``imagenet``, a file name, or
        None); recorded for provenance only, never loaded again.
    """

    backbone: str = "inception_resnet_v2"
    input_size: int = 386
    channels: int = 3
    encoding_dim: int = 64
    num_slices: int = 96
    stack_head: str = "reference"
    weights_init: str | None = None
    pooling: str = "avg"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise NetworkError(
                f"unknown pooling {self.pooling!r}; expected one of {', '.join(POOLINGS)}"
            )
        if self.backbone not in BACKBONES:
            raise NetworkError(
                f"unknown backbone {self.backbone!r}; expected one of {', '.join(BACKBONES)}"
            )
        if self.stack_head not in STACK_HEADS:
            raise NetworkError(
                f"unknown stack head {self.stack_head!r}; expected one of {', '.join(STACK_HEADS)}"
            )
        if self.channels not in (1, 3):
            raise NetworkError(f"channels must be 1 or 3, got {self.channels}")
        for name in ("input_size", "encoding_dim", "num_slices"):
            if getattr(self, name) < 1:
                raise NetworkError(f"{name} must be at least 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready mapping."""
        return asdict(self)

    @classmethod
    def from_dict(cls, mapping: dict[str, Any]) -> NetworkConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise NetworkError(f"unknown network config keys: {', '.join(unknown)}")
        return cls(**mapping)


# --------------------------------------------------------------------------- precision


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Build layers under a compute precision, restoring the previous global policy after.

    keras.applications builders take no dtype argument, so the global policy is the only
    way to run the backbone in bfloat16; this scopes that global to one build.

    Parameters
    ----------
    precision : str
        ``float32``, or ``bfloat16`` / ``float16`` for Keras' ``mixed_bfloat16`` /
        ``mixed_float16`` policy (float32 variables, reduced-precision compute). No loss
        scaling is needed: the networks are only run forward in reduced precision.
    """
    if precision not in PRECISIONS:
        raise NetworkError(
            f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
        )
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if precision == "float32" else f"mixed_{precision}")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# --------------------------------------------------------------------------- slice CNN


def keras_cache_dir() -> Path:
    """Return the folder where Keras caches application weights (``$KERAS_HOME/models``).

    Resolved at call time, as Keras resolves it at import time: ``$KERAS_HOME``, else
    ``~/.keras``, else ``/tmp/.keras`` when home is not writable.
    """
    home = os.environ.get("KERAS_HOME")
    if home:
        base = Path(home).expanduser()
    else:
        user_home = Path("~").expanduser()
        base = (user_home if os.access(user_home, os.W_OK) else Path("/tmp")) / ".keras"
    return base / "models"


def imagenet_weights_path() -> Path:
    """Return the cached ImageNet notop weights of InceptionResNetV2, or raise if absent.

    Raises
    ------
    NetworkError
        The file is not in the Keras cache. There is no network access in a hospital
        worker, so rather than let Keras try a download, the message says which file to
        put where.
    """
    path = keras_cache_dir() / IMAGENET_WEIGHTS_FILE
    if not path.is_file():
        raise NetworkError(
            f"ImageNet weights for inception_resnet_v2 are not in the Keras cache: place "
            f"{IMAGENET_WEIGHTS_FILE} (from {_IMAGENET_URL}) at {path}, or set KERAS_HOME "
            f"to a folder whose models/ subfolder holds it"
        )
    return path


def _inception_resnet_v2(input_size: int, channels: int, weights: str | None) -> Any:
    """Return the InceptionResNetV2 feature extractor (no top) for [-1, 1] input."""
    shape = (input_size, input_size, channels)
    if weights is None:
        return keras.applications.InceptionResNetV2(
            include_top=False, weights=None, input_shape=shape
        )
    if weights == "imagenet":
        source = str(imagenet_weights_path())
        # Build without weights and load the cached file ourselves: keras.applications
        # would otherwise fetch over the network, and refuses 1 channel with "imagenet".
        three = keras.applications.InceptionResNetV2(
            include_top=False, weights=None, input_shape=(input_size, input_size, 3)
        )
        three.load_weights(source)
        if channels == 3:
            return three
        one = keras.applications.InceptionResNetV2(
            include_top=False, weights=None, input_shape=shape
        )
        _copy_to_single_channel(three, one)
        return one
    path = Path(weights)
    if not path.is_file():
        raise NetworkError(f"backbone weights file {path} does not exist")
    model = keras.applications.InceptionResNetV2(include_top=False, weights=None, input_shape=shape)
    model.load_weights(str(path))
    return model


def _copy_to_single_channel(source: Any, target: Any) -> None:
    """Copy a 3-channel backbone's weights into a 1-channel one.

    The first convolution's kernel is summed over its input channels: a grey image fed as
    three equal channels gives the same response, so ImageNet features carry over.
    """
    first = True
    for src, dst in zip(source.layers, target.layers, strict=True):
        weights = src.get_weights()
        if not weights:
            continue
        if first and isinstance(dst, layers.Conv2D):
            weights = [weights[0].sum(axis=2, keepdims=True), *weights[1:]]
            first = False
        dst.set_weights(weights)


def _plain_cnn(
    name: str,
    plan: tuple[tuple[int, int], ...],
    input_size: int,
    channels: int,
    weights: str | None,
) -> Any:
    """Return a chain of 3×3 convolution, batch norm and ReLU, one per (filters, stride)."""
    inputs = keras.Input((input_size, input_size, channels), name=f"{name}_input")
    x = inputs
    for i, (filters, stride) in enumerate(plan):
        x = layers.Conv2D(
            filters, 3, strides=stride, padding="same", use_bias=False, name=f"conv{i}"
        )(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.Activation("relu", name=f"relu{i}")(x)
    model = keras.Model(inputs, x, name=name)
    if weights == "imagenet":
        raise NetworkError(f"the {name} backbone has no ImageNet weights")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise NetworkError(f"backbone weights file {path} does not exist")
        model.load_weights(str(path))
    return model


def _small_backbone(input_size: int, channels: int, weights: str | None) -> Any:
    """Return a compact strided CNN with the backbone interface, for tests and demos.

    A first layer at full resolution: a filling defect in a segmental artery is only a few
    pixels across, and a stride-2 first layer with 16 filters would blur it away.
    """
    plan = ((16, 1), (32, 2), (64, 2), (128, 2), (128, 2))
    return _plain_cnn("small", plan, input_size, channels, weights)


def _compact_backbone(input_size: int, channels: int, weights: str | None) -> Any:
    """Return an eight-layer CNN for CPU training at 192–256 pixels.

    A stride-2 stem with enough filters to keep a few-pixel defect (24 filters from 12
    input values per position), then pairs of a stride-1 and a stride-2 layer. Its
    receptive field is about 60 input pixels (70–90 mm of chest after the crop), enough to
    tell an artery's filling defect from a vein or a bronchus beside it; the five-layer
    ``small`` one sees about 30.
    """
    plan = ((24, 2), (32, 1), (48, 2), (64, 1), (96, 2), (128, 1), (160, 2), (160, 1))
    return _plain_cnn("compact", plan, input_size, channels, weights)


@keras.saving.register_keras_serializable(package="ctpa")
class GeMPooling(layers.Layer):
    """Generalised-mean pooling over the spatial axes, ``mean(x ** p) ** (1 / p)``.

    ``p`` is learned (from 3): at 1 it is average pooling, and as it grows it approaches
    max pooling, so a few-pixel defect is not diluted by the whole slice.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.initial_p = p
        self.eps = eps

    def build(self, input_shape: Any) -> None:
        """Create the exponent."""
        self.p = self.add_weight(
            name="p",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_p),
            trainable=True,
        )

    def call(self, x: Any) -> Any:
        """Pool (batch, rows, columns, channels) to (batch, channels)."""
        x = ops.maximum(ops.cast(x, "float32"), self.eps)
        pooled = ops.mean(ops.power(x, self.p), axis=(1, 2))
        return ops.power(pooled, 1.0 / self.p)

    def compute_output_shape(self, input_shape: Any) -> Any:
        """(batch, channels)."""
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments."""
        return {**super().get_config(), "p": self.initial_p, "eps": self.eps}


def _pooling(kind: str) -> Any:
    if kind == "max":
        return layers.GlobalMaxPooling2D(name="pool", dtype="float32")
    if kind == "gem":
        return GeMPooling(name="pool", dtype="float32")
    return layers.GlobalAveragePooling2D(name="pool", dtype="float32")


def build_slice_cnn(
    backbone: str,
    input_size: int,
    channels: int,
    weights: str | Path | None,
    encoding_dim: int = 64,
    *,
    head_units: int = 512,
    dropout: float = 0.2,
    seed: int | None = None,
    pooling: str = "avg",
) -> Any:
    """Build the slice classifier: backbone, pooling, Dense, Dropout, encoding, sigmoid.

    Parameters
    ----------
    backbone : str
        ``inception_resnet_v2`` (production, keras.applications) or ``small``.
    input_size : int
        Rows and columns of the input; InceptionResNetV2 needs at least 75.
    channels : int
        1 or 3. A 1-channel model loaded from ImageNet gets the first convolution's kernel
        summed over the colour channels.
    weights : str, Path or None
        None (random), ``imagenet`` (from the Keras cache only; a clear
        :class:`NetworkError` if the file is absent), or the path of an ``.h5`` file of
        backbone weights such as Model A's chest X-ray weights.
    encoding_dim : int
        Units of the linear encoding layer (named :data:`ENCODING_LAYER`).
    head_units, dropout : int, float
        The dense layer and dropout between pooling and the encoding.
    seed : int, optional
        Seeds Keras' random generators before building, so initial weights repeat.
    pooling : str
        One of :data:`POOLINGS`: global average (the paper), max or GeM.

    Returns
    -------
    keras.Model
        Input ``image`` (input_size, input_size, channels) in [0, 1]; output ``slice``, the
        probability that the slice shows an embolus. :func:`slice_encoder` gives the
        encoding view.
    """
    if backbone not in BACKBONES:
        raise NetworkError(f"unknown backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")
    if channels not in (1, 3):
        raise NetworkError(f"channels must be 1 or 3, got {channels}")
    if backbone == "inception_resnet_v2" and input_size < 75:
        raise NetworkError(
            f"inception_resnet_v2 needs an input size of 75 or more, got {input_size}"
        )
    if seed is not None:
        keras.utils.set_random_seed(seed)
    weights_arg = None if weights is None else str(weights)
    if pooling not in POOLINGS:
        raise NetworkError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
    if backbone == "inception_resnet_v2":
        features = _inception_resnet_v2(input_size, channels, weights_arg)
    elif backbone == "compact":
        features = _compact_backbone(input_size, channels, weights_arg)
    else:
        features = _small_backbone(input_size, channels, weights_arg)

    inputs = keras.Input((input_size, input_size, channels), name="image")
    # [0, 1] -> [-1, 1], what inception_resnet_v2.preprocess_input does for [0, 255].
    x = layers.Rescaling(2.0, offset=-1.0, name="to_unit_range")(inputs)
    x = features(x)
    # The head is float32 whatever the policy: it is cheap, and the encoding feeds the
    # float32 sequence model, so only the backbone's convolutions run in reduced precision.
    x = _pooling(pooling)(x)
    x = layers.Dense(head_units, activation="relu", name="dense", dtype="float32")(x)
    x = layers.Dropout(dropout, name="dropout", dtype="float32")(x)
    x = layers.Dense(encoding_dim, name=ENCODING_LAYER, dtype="float32")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="slice", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"slice_cnn_{backbone}")


def slice_encoder(slice_cnn: Any) -> Any:
    """Return the view of a slice CNN that outputs its encoding (shares its weights)."""
    return keras.Model(
        slice_cnn.input,
        slice_cnn.get_layer(ENCODING_LAYER).output,
        name=f"{slice_cnn.name}_encoder",
    )


# --------------------------------------------------------------------------- sequence model


@keras.saving.register_keras_serializable(package="ctpa")
class MaskedProbabilities(layers.Layer):
    """Squeezes (n, 1) slice probabilities to (n,) and zeroes the padding slots."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Accept the BiLSTM's implicit mask; the explicit one is applied here instead.
        self.supports_masking = True

    def compute_mask(self, *args: Any, **kwargs: Any) -> None:
        """Stop the implicit mask: padding is already zero."""
        return None

    # The argument is ``valid``, not ``mask``: Keras treats a ``mask`` argument as its own
    # implicit mask and would not pass the tensor through as an input.
    def call(self, probabilities: Any, valid: Any) -> Any:
        """Return ``probabilities[..., 0] * valid``."""
        return ops.squeeze(probabilities, axis=-1) * ops.cast(valid, probabilities.dtype)

    def compute_output_shape(self, probabilities_shape: Any, valid_shape: Any) -> Any:
        """Drop the last axis."""
        return tuple(probabilities_shape[:-1])


@keras.saving.register_keras_serializable(package="ctpa")
class TopSliceLogits(layers.Layer):
    """The ``k`` highest slice probabilities of a study as logits, highest first.

    Padding slots are already zero (:class:`MaskedProbabilities`), so they only reach the
    top ``k`` in a study with fewer than ``k`` slices. Logits, not probabilities, so that
    a Dense over them is a logistic model of how sure the strongest slices are.
    """

    def __init__(self, k: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = k

    def call(self, probabilities: Any) -> Any:
        """(batch, slices) probabilities to (batch, k) logits."""
        top, _ = ops.top_k(probabilities, self.k)
        top = ops.clip(top, 1e-6, 1.0 - 1e-6)
        return ops.log(top) - ops.log(1.0 - top)

    def compute_output_shape(self, probabilities_shape: Any) -> Any:
        """(batch, k)."""
        return (probabilities_shape[0], self.k)

    def get_config(self) -> dict[str, Any]:
        """Serialise ``k``."""
        return {**super().get_config(), "k": self.k}


@keras.saving.register_keras_serializable(package="ctpa")
class MaskedAttentionPool(layers.Layer):
    """Pools slice features position-invariantly: attention-weighted mean and max.

    The attention score is a learned linear function of each slice's features; padding
    slots get a score of -1e9 before the softmax and -1e9 features before the max, so
    neither pooling sees them.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True
        self.score = layers.Dense(1, name="score")

    def compute_mask(self, *args: Any, **kwargs: Any) -> None:
        """Pooling removes the slice axis, so no mask goes on."""
        return None

    def build(self, features_shape: Any, valid_shape: Any = None) -> None:
        """Build the scoring layer."""
        self.score.build(features_shape)

    def call(self, features: Any, valid: Any) -> Any:
        """Return the concatenated attention mean and max over real slices."""
        valid = ops.cast(valid, "bool")
        scores = ops.squeeze(self.score(features), axis=-1)
        scores = ops.where(valid, scores, ops.full_like(scores, -1e9))
        weights = ops.softmax(scores, axis=-1)
        pooled = ops.sum(features * ops.expand_dims(weights, -1), axis=1)
        hidden = ops.where(ops.expand_dims(valid, -1), features, ops.full_like(features, -1e9))
        return ops.concatenate([pooled, ops.max(hidden, axis=1)], axis=-1)

    def compute_output_shape(self, features_shape: Any, valid_shape: Any = None) -> Any:
        """(batch, 2 × features)."""
        return (features_shape[0], 2 * features_shape[-1])


def build_sequence_model(
    num_slices: int = 96,
    encoding_dim: int = 64,
    stack_head: str = "reference",
    *,
    lstm_units: int = 64,
    dense_units: tuple[int, int] = (512, 128),
    stack_dropout: float = 0.05,
    seed: int | None = None,
) -> Any:
    """Build the BiLSTM over slice encodings, with a slice and a stack output.

    Parameters
    ----------
    num_slices : int
        Slots of the sequence (96 in the paper); shorter studies are padded.
    encoding_dim : int
        Size of each slice encoding.
    stack_head : str
        ``reference``: the authors' head, Dropout then a Dense over the vector of slice
        probabilities, so it has one weight per slice position. ``attention``: attention
        and max pooling over the slices' 128-d features, then a Dense; invariant to where
        in the slots the chest lies. ``top_slices``: a logistic model of the three
        highest slice probabilities (four weights), invariant to position and too small
        to overfit a few hundred studies, which the other two heads do.
    lstm_units, dense_units, stack_dropout : int, (int, int), float
        Layer sizes and the stack head's dropout.
    seed : int, optional
        Seeds Keras' random generators before building.

    Returns
    -------
    keras.Model
        Inputs ``encodings`` (num_slices, encoding_dim) float32 and ``mask``
        (num_slices,) bool, True for real slices. Outputs a dict: ``slice``
        (num_slices,), zero at padding, and ``stack`` (1,). Padding slots never change
        either output.
    """
    if stack_head not in STACK_HEADS:
        raise NetworkError(
            f"unknown stack head {stack_head!r}; expected one of {', '.join(STACK_HEADS)}"
        )
    if seed is not None:
        keras.utils.set_random_seed(seed)
    encodings = keras.Input((num_slices, encoding_dim), name="encodings")
    mask = keras.Input((num_slices,), dtype="bool", name="mask")

    # The explicit mask goes to every layer that mixes slices: padding encodings are what
    # the CNN made of a blank image, not zeros, so Masking on zeros would miss them.
    x = layers.BatchNormalization(name="norm")(encodings, mask=mask)
    x = layers.Bidirectional(
        layers.LSTM(lstm_units, return_sequences=True, name="lstm"), name="bilstm"
    )(x, mask=mask)
    x = layers.TimeDistributed(
        layers.Dense(dense_units[0], activation="relu"), name="slice_dense1"
    )(x)
    features = layers.TimeDistributed(
        layers.Dense(dense_units[1], activation="relu"), name="slice_dense2"
    )(x)
    logits = layers.TimeDistributed(layers.Dense(1, activation="sigmoid"), name="slice_sigmoid")(
        features
    )
    slice_probs = MaskedProbabilities(name="slice")(logits, mask)

    stack_kwargs: dict[str, Any] = {}
    if stack_head == "reference":
        pooled = layers.Dropout(stack_dropout, name="stack_dropout")(slice_probs)
    elif stack_head == "top_slices":
        pooled = TopSliceLogits(3, name="top_slices")(slice_probs)
        # A study is positive if any slice is, so the stack may only rise with its
        # strongest slices: unconstrained, 0.4.0's head learned weights of mixed sign
        # (-0.07, 0.43, -1.00), and its slice outputs then ran highest in negatives.
        stack_kwargs = {
            "kernel_initializer": keras.initializers.Constant(1.0 / 3),
            "kernel_constraint": keras.constraints.NonNeg(),
        }
    else:
        pooled = MaskedAttentionPool(name="attention_pool")(features, mask)
    stack = layers.Dense(1, activation="sigmoid", name="stack", **stack_kwargs)(pooled)
    return keras.Model(
        {"encodings": encodings, "mask": mask},
        {"slice": slice_probs, "stack": stack},
        name=f"sequence_{stack_head}",
    )


def build_configured_slice_cnn(
    config: NetworkConfig,
    *,
    weights: str | Path | None = None,
    precision: str = "float32",
    seed: int | None = None,
) -> Any:
    """The slice CNN of :func:`build_networks` alone, in ``precision``."""
    with dtype_policy(precision):
        return build_slice_cnn(
            config.backbone,
            config.input_size,
            config.channels,
            weights,
            config.encoding_dim,
            seed=seed,
            pooling=config.pooling,
        )


def build_networks(
    config: NetworkConfig,
    *,
    weights: str | Path | None = None,
    precision: str = "float32",
    seed: int | None = None,
) -> tuple[Any, Any]:
    """Build the (slice CNN, sequence model) pair that a config describes.

    Parameters
    ----------
    config : NetworkConfig
        Shapes and heads.
    weights : str, Path or None
        Initial backbone weights for :func:`build_slice_cnn`; None when trained weights
        will be loaded over them.
    precision : str
        Compute precision of the slice CNN (:data:`PRECISIONS`); the sequence model is
        always float32 (it is a few MFLOP per study).
    seed : int, optional
        Seeds both builds.
    """
    cnn = build_configured_slice_cnn(config, weights=weights, precision=precision, seed=seed)
    sequence = build_sequence_model(
        config.num_slices,
        config.encoding_dim,
        config.stack_head,
        seed=None if seed is None else seed + 1,
    )
    return cnn, sequence
