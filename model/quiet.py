"""Importing TensorFlow without its C++ start-up lines on stderr."""

from __future__ import annotations

import os
import sys


def quiet_tensorflow() -> None:
    """Import TensorFlow with its C++ logging off (``TF_CPP_MIN_LOG_LEVEL=3``, unless set).

    Some of its lines (CPU features, oneDNN, CUDA probing) are written before TensorFlow
    reads ``TF_CPP_MIN_LOG_LEVEL``, so stderr is pointed at /dev/null for the import; a
    Python error is still raised after stderr is restored. Without the level, a host
    without a GPU also gets an alarming ``failed call to cuInit`` error line later.
    Call it before anything else imports TensorFlow, while the process has one thread.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_keras_backend() -> None:
    """:func:`quiet_tensorflow` when Keras will load TensorFlow; else keep TensorFlow out.

    On the JAX and PyTorch backends TensorFlow must not be imported at all: it may not be
    installed, and it would take memory and a GPU it does not use
    (:func:`model.backend.block_tensorflow`).
    """
    from model.backend import block_tensorflow, configured_backend

    if configured_backend() == "tensorflow":
        quiet_tensorflow()
    else:
        block_tensorflow()
