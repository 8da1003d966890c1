"""Heat maps of where the slice CNN looked: Grad-CAM, sharpened by the input gradient.

For each of the top-K flagged slices of a prediction, :class:`Explainer` runs the slice CNN's
backbone on that slice's model input, takes the gradient of the CNN's own slice logit with
respect to the backbone's last feature map (the last convolutional block of the ``small``,
``compact`` and InceptionResNetV2 backbones alike), and weighs each feature channel by its
mean gradient (Grad-CAM, Selvaraju et al. 2017). That map is as coarse as the feature grid
(16 input pixels, 25 mm at the demo bundle's 1.6 mm), wider than a segmental clot. By
default it is multiplied, pixel by pixel, by the magnitude of the logit's gradient with
respect to the input image (smoothed over a pixel or two): Grad-CAM says which region,
the gradient which pixels in it the logit is sensitive to (the same product as the
paper's Guided Grad-CAM, with the plain gradient in place of guided backpropagation).
On 10 realistic positives the demo bundle 0.5.0's peaks came within 5 mm of an embolus on
35 of 80 explained slices with the product, as many as hold an embolus at all (the others
are slices the model flagged wrongly), 21 with Grad-CAM alone; on 10 easy positives, 69
of 80, again as many as hold one (``benchmarks/heatmap_localisation.py``). The map is put
back on the source slice's pixel grid by inverting, exactly, the two geometric steps
between them:

1. feature cell to input pixel: the centre of each cell's receptive field, from the
   strides, kernels and paddings along the backbone (:func:`feature_geometry`);
2. input pixel to source pixel: the chest crop and PIL's bilinear resize of
   :func:`model.preprocess.preprocess_volume` (:func:`source_coordinates`).

Grad-CAM alone differentiates only the head (pooling and dense layers): one backbone
forward pass per explained slice. The input gradient adds a forward and backward pass
through the whole CNN; the worker makes the maps after the SR and the HL7 message are
queued, so neither delays the flag.
The gradient needs the backend's autodiff: TensorFlow's ``GradientTape``, ``jax.grad`` or
``torch.autograd``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from model.network import ENCODING_LAYER
from model.preprocess import FieldOfView, PreprocessedSeries

GRAD_CAM = "grad-cam"
"""Grad-CAM alone, on the backbone's feature grid."""
GRAD_CAM_X_GRADIENT = "grad-cam-x-gradient"
"""Grad-CAM times the smoothed magnitude of the input gradient (the default)."""
METHODS = (GRAD_CAM_X_GRADIENT, GRAD_CAM)
# The input gradient is smoothed over about a pixel and a half before the product: raw, it
# is speckled pixel to pixel, and a clot a few input pixels wide should light as a whole.
_GRADIENT_SIGMA_PX = 1.5

# The head of the slice CNN after the backbone, in order (see model.network.build_slice_cnn).
_HEAD = ("pool", "dense", "dropout", ENCODING_LAYER)
_OUTPUT = "slice"
_RESCALING = "to_unit_range"
_AUTODIFF_BACKENDS = ("tensorflow", "jax", "torch")


class ExplainError(ValueError):
    """A heat map cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class FeatureGeometry:
    """Where the cells of the backbone's last feature map sit on the input grid.

    The receptive field of cell ``j`` (along rows or columns alike) is centred on input
    pixel ``stride * j + offset``.
    """

    stride: float
    offset: float
    cells: int


@dataclass(frozen=True)
class SliceHeatmap:
    """The heat map of one explained slice.

    Parameters
    ----------
    sop_instance_uid : str
        The source slice it belongs to.
    slot : int
        The model input slice it was computed on.
    probability : float
        The calibrated slice probability the prediction gave this source slice.
    cnn_probability : float
        The slice CNN's own output on the slot (mean over folds): what Grad-CAM explains.
    position_mm : float
        The slot's position along the cranially pointing slice normal.
    input_heatmap : numpy.ndarray
        ``(input_size, input_size)`` float32 in [0, 1], on the model input's grid.
    heatmap : numpy.ndarray
        ``(Rows, Columns)`` float32 in [0, 1] (peak 1), on the source slice's pixel grid; zero
        outside the part of the slice that the model input shows.
    """

    sop_instance_uid: str
    slot: int
    probability: float
    cnn_probability: float
    position_mm: float
    input_heatmap: NDArray[np.float32]
    heatmap: NDArray[np.float32]

    @property
    def peak(self) -> tuple[int, int]:
        """(row, column) of the heat map's maximum on the source grid."""
        row, column = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape)
        return int(row), int(column)


@dataclass
class Explanation:
    """Heat maps for the top slices of one prediction, and what they cost."""

    heatmaps: list[SliceHeatmap]
    method: str
    seconds: float


# --------------------------------------------------------------------------- geometry


def _spatial_step(operation: Any, n_in: int, n_out: int) -> tuple[float, float] | None:
    """(stride, offset) of one layer along an axis: output ``j`` centres on ``s*j + c``."""
    if isinstance(operation, keras.layers.ZeroPadding2D):
        return 1.0, -float(operation.padding[0][0])
    kernel = getattr(operation, "kernel_size", None) or getattr(operation, "pool_size", None)
    strides = getattr(operation, "strides", None)
    if kernel is None or strides is None:
        return None
    k, s = int(kernel[0]), int(strides[0])
    dilation = int(getattr(operation, "dilation_rate", (1, 1))[0])
    span = (k - 1) * dilation + 1
    before = 0
    if getattr(operation, "padding", "valid") == "same":
        # TensorFlow's and XLA's SAME: any odd pixel of padding goes after the image.
        before = max((n_out - 1) * s + span - n_in, 0) // 2
    return float(s), (span - 1) / 2.0 - before


def feature_geometry(backbone: Any) -> FeatureGeometry:
    """Where the backbone's output cells sit on its input grid, from its layers.

    Walks from the output to the input along the first input of each layer. Parallel
    branches (InceptionResNetV2's blocks) are aligned by construction, so any path gives
    the same geometry.

    Raises
    ------
    ExplainError
        A layer on the path changes the spatial size in a way this does not know.
    """
    tensor = backbone.output
    stride, offset = 1.0, 0.0
    while True:
        operation, node_index, _ = tensor._keras_history
        if isinstance(operation, keras.layers.InputLayer):
            break
        # Keras keeps a layer's call graph in its inbound nodes; there is no public walk.
        node = operation._inbound_nodes[node_index]
        source = node.input_tensors[0]
        n_in, n_out = int(source.shape[1]), int(tensor.shape[1])
        step = _spatial_step(operation, n_in, n_out)
        if step is None:
            if n_in != n_out:
                raise ExplainError(
                    f"layer {operation.name!r} ({type(operation).__name__}) changes the "
                    f"feature map from {n_in} to {n_out} cells and its geometry is unknown"
                )
        else:
            s, c = step
            stride, offset = s * stride, s * offset + c
        tensor = source
    return FeatureGeometry(stride, offset, int(backbone.output.shape[1]))


def _resample(
    image: NDArray[np.floating], coordinates: NDArray[np.float64], axis: int
) -> NDArray[np.float32]:
    """Linear interpolation of ``image`` along ``axis`` at fractional indices.

    Coordinates are clamped to the first and last sample (as PIL and :func:`numpy.interp`
    do); a NaN coordinate gives zeros.
    """
    n = image.shape[axis]
    inside = ~np.isnan(coordinates)
    x = np.clip(np.where(inside, coordinates, 0.0), 0.0, n - 1)
    low = np.floor(x).astype(np.intp)
    high = np.minimum(low + 1, n - 1)
    shape = [1, 1]
    shape[axis] = len(coordinates)
    frac = (x - low).astype(np.float32).reshape(shape)
    keep = inside.astype(np.float32).reshape(shape)
    data = np.asarray(image, np.float32)
    low_values = np.take(data, low, axis=axis)
    high_values = np.take(data, high, axis=axis)
    return ((low_values + frac * (high_values - low_values)) * keep).astype(np.float32)


def source_coordinates(fov: FieldOfView, input_size: int) -> tuple[NDArray[np.float64], ...]:
    """For each source row and column, its position on the model input grid.

    The preprocessing resizes the ``height`` x ``width`` crop to ``input_size`` with PIL,
    which puts output pixel ``u`` over crop position ``(u + 0.5) * height / input_size``
    (pixel centres at half-integers); inverted, crop pixel ``i`` lies at input position
    ``(i + 0.5) * input_size / height - 0.5``. Rows and columns outside the crop get NaN.

    Returns
    -------
    tuple of numpy.ndarray
        ``(rows,)`` and ``(columns,)`` fractional input indices.
    """

    def axis(n: int, start: int, length: int) -> NDArray[np.float64]:
        index = np.arange(n, dtype=np.float64) - start
        out = (index + 0.5) * (input_size / length) - 0.5
        out[(index < 0) | (index >= length)] = np.nan
        return out

    return axis(fov.rows, fov.top, fov.height), axis(fov.columns, fov.left, fov.width)


def input_to_source(image: NDArray[np.floating], fov: FieldOfView) -> NDArray[np.float32]:
    """Put a map on the model input grid back on the source slice's pixel grid.

    Bilinear, at each source pixel's exact position on the input grid; zero outside the
    crop.
    """
    size = image.shape[0]
    if image.shape != (size, size):
        raise ExplainError(f"expected a square input-grid map, got shape {image.shape}")
    rows, columns = source_coordinates(fov, size)
    return _resample(_resample(image, rows, 0), columns, 1)


def feature_to_input(
    cam: NDArray[np.floating], geometry: FeatureGeometry, size: int
) -> NDArray[np.float32]:
    """Bilinear map of a feature-grid map onto the ``size`` x ``size`` input grid."""
    cells = (np.arange(size, dtype=np.float64) - geometry.offset) / geometry.stride
    return _resample(_resample(cam, cells, 0), cells, 1)


# --------------------------------------------------------------------------- Grad-CAM


def _gradient(head: Callable[[Any], Any], features: NDArray[np.float32]) -> NDArray[np.float32]:
    """d sum(head(features)) / d features, with the loaded backend's autodiff.

    Each image's logit depends only on its own features (dropout off, batch norm frozen),
    so the gradient of the sum is each image's own gradient.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensor = tf.convert_to_tensor(features)
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            total = tf.reduce_sum(head(tensor))
        return np.asarray(tape.gradient(total, tensor), dtype=np.float32)
    if backend == "jax":
        import jax

        grad = jax.grad(lambda a: jax.numpy.sum(head(a)))
        return np.asarray(grad(jax.numpy.asarray(features)), dtype=np.float32)
    if backend == "torch":
        import torch

        # On Keras's device (the GPU where there is one); autograd on, whatever the caller.
        tensor = keras.ops.convert_to_tensor(features).detach().requires_grad_(True)
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(head(tensor).sum(), tensor)
        return np.asarray(gradient.detach().cpu().numpy(), dtype=np.float32)
    raise ExplainError(f"no gradients on the {backend} backend here")


def _backbone(cnn: Any) -> Any:
    backbone = next((layer for layer in cnn.layers if isinstance(layer, keras.Model)), None)
    if backbone is None:
        raise ExplainError(f"model {cnn.name!r} has no backbone sub-model to explain")
    return backbone


class GradCAM:
    """Grad-CAM of one slice CNN; build once per process (it traces the backbone).

    Parameters
    ----------
    cnn : keras.Model
        A slice CNN from :func:`model.network.build_slice_cnn`.
    """

    def __init__(self, cnn: Any) -> None:
        from model.compiled import inference_function

        if keras.backend.backend() not in _AUTODIFF_BACKENDS:
            raise ExplainError(
                f"heat maps need gradients, which are implemented for the "
                f"{', '.join(_AUTODIFF_BACKENDS)} backends, not {keras.backend.backend()}; "
                f"run the worker on one of those or turn heat maps off"
            )
        backbone = _backbone(cnn)
        self.geometry = feature_geometry(backbone)
        image = keras.Input(cnn.input.shape[1:], name="image")
        # The same layers called on a new input: a view that shares the CNN's weights.
        features = keras.Model(image, backbone(cnn.get_layer(_RESCALING)(image)))
        self._features_model = features
        self._features = inference_function(features, input_shape=(None, *cnn.input.shape[1:]))
        self._head = [cnn.get_layer(name) for name in _HEAD]
        self._output = cnn.get_layer(_OUTPUT)

    def _logit(self, features: Any) -> Any:
        for layer in self._head:
            features = layer(features, training=False)
        # The logit, not the sigmoid: a confident slice's saturated sigmoid has almost
        # no gradient left.
        return keras.ops.matmul(features, self._output.kernel) + self._output.bias

    def __call__(
        self, images: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Grad-CAM on a batch of ``(n, size, size, channels)`` input images in [0, 1].

        Returns
        -------
        cams : numpy.ndarray
            ``(n, cells, cells)`` float32, non-negative, on the backbone's feature grid
            (not normalised).
        probabilities : numpy.ndarray
            ``(n,)`` the CNN's slice output on each image.
        """
        features = np.asarray(self._features(images), np.float32)
        gradient = _gradient(self._logit, features)
        # Grad-CAM: each channel weighs by the spatial mean of its gradient.
        alpha = gradient.mean(axis=(1, 2))
        cams = np.maximum(np.einsum("nhwc,nc->nhw", features, alpha), 0.0).astype(np.float32)
        logits = np.asarray(keras.ops.convert_to_numpy(self._logit(features)), np.float64)
        probabilities = (1.0 / (1.0 + np.exp(-logits.reshape(-1)))).astype(np.float32)
        return cams, probabilities

    def input_gradient(self, images: NDArray[np.float32]) -> NDArray[np.float32]:
        """``(n, size, size)``: the largest magnitude over the channels of d logit / d image.

        Smoothed in-plane by a Gaussian of ``_GRADIENT_SIGMA_PX``; not normalised.
        """

        def logit(batch: Any) -> Any:
            return self._logit(self._features_model(batch, training=False))

        gradient = np.abs(_gradient(logit, np.ascontiguousarray(images, np.float32))).max(axis=-1)
        return ndimage.gaussian_filter(
            gradient, (0, _GRADIENT_SIGMA_PX, _GRADIENT_SIGMA_PX)
        ).astype(np.float32)


def _normalised(image: NDArray[np.float32]) -> NDArray[np.float32]:
    peak = float(image.max()) if image.size else 0.0
    return (image / peak if peak > 0 else np.zeros_like(image)).astype(np.float32)


def sharpened(cam: NDArray[np.float32], gradient: NDArray[np.float32]) -> NDArray[np.float32]:
    """A Grad-CAM map on the input grid times the input gradient's magnitude, in [0, 1]."""
    return _normalised(_normalised(cam) * _normalised(gradient))


def _top_slots(
    series: PreprocessedSeries,
    slice_probabilities: dict[str, float],
    top_k: int,
    threshold: float | None,
) -> list[tuple[str, int]]:
    """(SOP Instance UID, slot) of the ``top_k`` most probable source slices.

    A source slice that several slots were resampled from is explained on the middle one.
    """
    slots: dict[str, list[int]] = {}
    for slot in np.flatnonzero(series.mask):
        uid = series.sop_instance_uids[int(slot)]
        if uid is not None:
            slots.setdefault(uid, []).append(int(slot))
    ranked = sorted(
        (uid for uid in slots if uid in slice_probabilities),
        key=lambda uid: slice_probabilities[uid],
        reverse=True,
    )
    if threshold is not None:
        ranked = [uid for uid in ranked if slice_probabilities[uid] >= threshold]
    return [(uid, slots[uid][len(slots[uid]) // 2]) for uid in ranked[:top_k]]


class Explainer:
    """Heat maps for the most probable slices of a prediction, from every fold's CNN.

    Parameters
    ----------
    cnns : sequence of keras.Model
        The slice CNN of each fold (``Predictor.slice_cnns``); their maps are averaged.
    batch_size : int
        Slices per backbone call.
    method : str
        One of :data:`METHODS`: ``grad-cam-x-gradient`` (the default) or ``grad-cam``.

    Raises
    ------
    ExplainError
        The backend has no autodiff here, a backbone's geometry is unknown, or
        the method is not one of :data:`METHODS`.
    """

    def __init__(
        self, cnns: Sequence[Any], batch_size: int = 16, method: str = GRAD_CAM_X_GRADIENT
    ) -> None:
        if not cnns:
            raise ExplainError("no slice CNN to explain")
        if batch_size < 1:
            raise ExplainError(f"batch_size must be at least 1, got {batch_size}")
        if method not in METHODS:
            raise ExplainError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        self._cams = [GradCAM(cnn) for cnn in cnns]
        self.batch_size = batch_size
        self.method = method

    def explain(
        self,
        series: PreprocessedSeries,
        slice_probabilities: dict[str, float],
        *,
        top_k: int = 8,
        threshold: float | None = None,
    ) -> Explanation:
        """Heat maps for the ``top_k`` most probable slices of one prediction.

        Parameters
        ----------
        series : PreprocessedSeries
            The preprocessed series the prediction was made on.
        slice_probabilities : dict of str to float
            ``Prediction.slice_probabilities``: which slices to explain, most probable
            first.
        top_k : int
            At most this many slices: the cost bound.
        threshold : float, optional
            Explain only slices at or above this probability (the flagged ones).

        Returns
        -------
        Explanation
            One :class:`SliceHeatmap` per explained slice, most probable first.
        """
        start = time.perf_counter()
        if top_k < 0:
            raise ExplainError(f"top_k must not be negative, got {top_k}")
        fov = series.field_of_view
        if fov is None:
            raise ExplainError(
                "the preprocessed series does not say which part of the slices the input "
                "shows (field_of_view); preprocess it with model.preprocess.preprocess_volume"
            )
        chosen = _top_slots(series, slice_probabilities, top_k, threshold)
        if not chosen:
            return Explanation([], self.method, time.perf_counter() - start)
        size = series.volume.shape[1]
        images = np.ascontiguousarray(series.volume[[slot for _, slot in chosen]], np.float32)
        maps = np.zeros((len(chosen), size, size), np.float32)
        probabilities = np.zeros(len(chosen), np.float64)
        for cam in self._cams:
            for first in range(0, len(chosen), self.batch_size):
                batch = images[first : first + self.batch_size]
                cams, probs = cam(batch)
                probabilities[first : first + len(cams)] += probs
                gradients = (
                    cam.input_gradient(batch) if self.method == GRAD_CAM_X_GRADIENT else None
                )
                for i, feature_map in enumerate(cams):
                    # Each fold's map is scaled to [0, 1] before averaging: their logits
                    # differ in scale.
                    on_input = feature_to_input(feature_map, cam.geometry, size)
                    if gradients is None:
                        maps[first + i] += _normalised(on_input)
                    else:
                        maps[first + i] += sharpened(on_input, gradients[i])
        heatmaps = []
        for (uid, slot), image, probability in zip(chosen, maps, probabilities, strict=True):
            on_input = _normalised(image)
            heatmaps.append(
                SliceHeatmap(
                    sop_instance_uid=uid,
                    slot=slot,
                    probability=float(slice_probabilities[uid]),
                    cnn_probability=float(probability / len(self._cams)),
                    position_mm=float(series.slice_positions_mm[slot]),
                    input_heatmap=on_input,
                    # Peak at 1 on the source grid too: a map sharper than the feature grid
                    # loses a little of its peak to the bilinear resampling.
                    heatmap=_normalised(np.clip(input_to_source(on_input, fov), 0.0, 1.0)),
                )
            )
        return Explanation(heatmaps, self.method, time.perf_counter() - start)
