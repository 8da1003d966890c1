"""Where a worker process runs the model: its Keras backend and its device.

Both must be in the environment before Keras is imported (Keras reads ``KERAS_BACKEND``
once, the CUDA runtimes read ``CUDA_VISIBLE_DEVICES`` once), so a worker process calls
:func:`load_predictor` before anything else touches the model package. With several
GPUs and ``model.device: auto``, worker ``i`` is given GPU ``i mod the GPU count``
(:func:`model.backend.assign_device`): one device each, spread evenly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from model.backend import assign_device, select_backend, select_device, visible_gpus
from triage.config import Config

if TYPE_CHECKING:
    from model.predict import Predictor


def worker_device(config: Config, worker_index: int) -> str:
    """The device worker ``worker_index`` runs on: ``cpu`` or ``cuda:N``."""
    return assign_device(config.model.device, worker_index, visible_gpus())


def load_predictor(config: Config, worker_index: int = 0) -> Predictor:
    """Choose the backend and device for this process, then load the bundle.

    Parameters
    ----------
    config : Config
        ``model`` gives the backend, device, bundle, precision, threads and batch size.
    worker_index : int
        This worker's number among ``worker.processes``, from 0; picks its GPU.

    Raises
    ------
    BackendError
        Keras was already loaded with another backend, or ``model.device`` names a GPU
        this host does not have.
    """
    select_backend(config.model.backend)
    select_device(worker_device(config, worker_index))
    # TensorFlow's C++ start-up lines are kept off stderr; the other backends must not
    # import TensorFlow at all.
    from model.quiet import native_stderr_silenced, quiet_keras_backend

    quiet_keras_backend()
    from model.predict import Predictor

    # Loading and warming up run every kernel once: the native one-time lines come now.
    with native_stderr_silenced():
        return Predictor.load(
            config.model.bundle_dir,
            precision=config.model.precision,
            threads=config.model.threads,
            batch_size=config.model.batch_size,
        )
