"""A Keras model's inference call, compiled the way its backend runs fastest.

Calling a Keras 3 model eagerly costs Python overhead per layer on every call. Each
backend has its own way around that, and :func:`inference_function` picks it:

- ``tensorflow``: a ``tf.function`` trace (optionally XLA-compiled);
- ``jax``: ``jax.jit`` over :meth:`keras.Model.stateless_call`, with the weights passed
  in as arguments so that they are not baked into the program as constants;
- ``torch``: the eager call under ``torch.inference_mode`` (no autograd bookkeeping).

Every function takes NumPy input (an array, or a dict of arrays) and returns NumPy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np


def recompiles_per_shape(jit_compile: bool) -> bool:
    """Whether each new input shape costs a compilation on the loaded backend.

    Then callers should pad their batches to one size, so that one program serves all.
    """
    backend = keras.backend.backend()
    return backend == "jax" or (backend == "tensorflow" and jit_compile)


def inference_function(
    model: keras.Model,
    *,
    jit_compile: bool = False,
    input_shape: tuple[int | None, ...] | None = None,
) -> Callable[[Any], Any]:
    """Return a function that runs ``model`` in inference mode (dropout off, BN frozen).

    Parameters
    ----------
    model : keras.Model
        A built model.
    jit_compile : bool
        TensorFlow only: compile with XLA (JAX always compiles; PyTorch runs eagerly).
    input_shape : tuple of int, optional
        TensorFlow only: the input's shape with ``None`` for a free batch axis, so that
        one trace serves every batch size.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow(model, jit_compile, input_shape)
    if backend == "jax":
        return _jax(model)
    if backend == "torch":
        return _torch(model)
    raise ValueError(f"no inference function for the Keras backend {backend!r}")


def run_in_batches(
    function: Callable[[Any], Any], images: Any, batch_size: int, *, pad: bool = False
) -> Any:
    """``function`` over ``images`` in batches of ``batch_size``, concatenated.

    With ``pad``, a short last batch is padded with zeros to the full size and the padding's
    outputs dropped, so that a backend that compiles per shape (:func:`recompiles_per_shape`)
    runs one program for every study. ``images`` must hold at least one image.
    """
    chunks = []
    for first in range(0, len(images), batch_size):
        batch = images[first : first + batch_size]
        real = len(batch)
        if pad and real < batch_size:
            filler = np.zeros((batch_size - real, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, filler])
        chunks.append(function(batch)[:real])
    return np.concatenate(chunks)


def _numpy(outputs: Any) -> Any:
    """Outputs (a tensor or a dict of them) as float32 NumPy arrays."""
    if isinstance(outputs, dict):
        return {key: _numpy(value) for key, value in outputs.items()}
    return np.asarray(keras.ops.convert_to_numpy(outputs), dtype=np.float32)


def _tensorflow(
    model: keras.Model, jit_compile: bool, input_shape: tuple[int | None, ...] | None
) -> Callable[[Any], Any]:
    import tensorflow as tf

    # XLA compiles per shape anyway, so it gets no signature.
    signature = (
        [tf.TensorSpec(input_shape, tf.float32)]
        if input_shape is not None and not jit_compile
        else None
    )

    def call(inputs: Any) -> Any:
        return model(inputs, training=False)

    traced = tf.function(
        call, input_signature=signature, jit_compile=jit_compile, reduce_retracing=True
    )
    return lambda inputs: _numpy(traced(inputs))


def _jax(model: keras.Model) -> Callable[[Any], Any]:
    import jax

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def call(trainable: Any, non_trainable: Any, inputs: Any) -> Any:
        outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=False)
        return outputs

    return lambda inputs: _numpy(call(trainable, non_trainable, inputs))


def _torch(model: keras.Model) -> Callable[[Any], Any]:
    import torch

    def call(inputs: Any) -> Any:
        with torch.inference_mode():
            return _numpy(model(inputs, training=False))

    return call
