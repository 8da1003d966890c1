"""Importing TensorFlow without its C++ start-up lines on stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


def quiet_tensorflow() -> None:
    """Import TensorFlow with its C++ logging off (``TF_CPP_MIN_LOG_LEVEL=3``, unless set).

    Some of its lines (CPU features, oneDNN, CUDA probing) are written before TensorFlow
    reads ``TF_CPP_MIN_LOG_LEVEL``, so the native stderr is silenced for the import
    (:func:`native_stderr_silenced`); Python's own errors still reach stderr. Without the
    level, a host without a GPU also gets an alarming ``failed call to cuInit`` line later.
    Call it before anything else imports TensorFlow, while the process has one thread.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    with native_stderr_silenced():
        import tensorflow

        # Setting up the devices probes CUDA, and on a host without a GPU that writes
        # "failed call to cuInit" whatever TF_CPP_MIN_LOG_LEVEL says (absl logs it before
        # it reads the level). One small operation sets them up here, once per process.
        tensorflow.config.list_physical_devices("GPU")
        tensorflow.constant(0.0).numpy()


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


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what native libraries write to file descriptor 2 to /dev/null for a while.

    TensorFlow and oneDNN write some lines (``oneDNN supports DT_BOOL only on platforms
    with AVX-512``, CUDA probing) straight to the descriptor, before absl reads any log
    level, so neither ``TF_CPP_MIN_LOG_LEVEL`` nor Python can filter them. Python's own
    ``sys.stderr`` and the logging handlers on it keep writing to the real stderr through
    a duplicate of the descriptor, so log lines and tracebacks are not lost.
    """
    import logging

    sys.stderr.flush()
    old = sys.stderr
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    real = open(saved, "w", buffering=1, closefd=False)  # noqa: SIM115
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream is old
    ]
    try:
        os.dup2(devnull, 2)
        sys.stderr = real
        for handler in handlers:
            handler.setStream(real)
        yield
    finally:
        real.flush()
        os.dup2(saved, 2)
        sys.stderr = old
        for handler in handlers:
            handler.setStream(old)
        real.close()
        os.close(saved)
        os.close(devnull)
