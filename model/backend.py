"""Which Keras backend and which device a process runs the model on.

Keras reads ``KERAS_BACKEND`` once, when it is first imported, and the CUDA runtimes of
TensorFlow, JAX and PyTorch read ``CUDA_VISIBLE_DEVICES`` once, when they start. So both
are chosen here, as environment variables, before anything imports Keras:

- :func:`select_backend` and :func:`select_device` set the environment;
- :func:`assign_device` spreads worker processes over the GPUs, one device each;
- :func:`describe_device` says, after the import, what the backend actually runs on.

Nothing here imports Keras or a backend at module import, so the daemon can call it in a
freshly spawned worker before the predictor loads.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import re
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

BACKENDS = ("tensorflow", "jax", "torch")
"""Keras backends the predictor runs on."""

_DEVICE = re.compile(r"^(auto|cpu|cuda:\d+)$")


class BackendError(ValueError):
    """A backend or device cannot be used as asked; the message says what to change."""


def configured_backend(environ: Mapping[str, str] | None = None) -> str:
    """The backend Keras will load in this process, read as Keras reads it.

    ``KERAS_BACKEND`` wins; else the ``backend`` of ``$KERAS_HOME/keras.json`` (or
    ``~/.keras/keras.json``); else ``tensorflow``. Keras itself is not imported.
    """
    env = os.environ if environ is None else environ
    if env.get("KERAS_BACKEND"):
        return env["KERAS_BACKEND"]
    home = Path(env.get("KERAS_HOME") or Path.home() / ".keras")
    try:
        stored = json.loads((home / "keras.json").read_text())
    except (OSError, ValueError):
        return "tensorflow"
    backend = stored.get("backend") if isinstance(stored, dict) else None
    return str(backend) if backend else "tensorflow"


def select_backend(name: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Make Keras load ``name`` (:data:`BACKENDS`) when it is imported in this process.

    Raises
    ------
    BackendError
        The name is unknown, or Keras was already imported with another backend (it
        cannot change backend once loaded).
    """
    if name not in BACKENDS:
        raise BackendError(f"unknown Keras backend {name!r}; expected one of {', '.join(BACKENDS)}")
    env = os.environ if environ is None else environ
    keras = sys.modules.get("keras")
    if keras is not None and environ is None:
        loaded = keras.backend.backend()
        if loaded != name:
            raise BackendError(
                f"Keras was already imported with the {loaded} backend, so it cannot run on "
                f"{name}; choose the backend before anything imports Keras"
            )
    env["KERAS_BACKEND"] = name


class _RefuseTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An import hook under which ``import tensorflow`` fails as if it were not installed.

    The refusal comes at loading, not at finding: a library that only asks where a module
    lives (PyTorch's compiler looks up TensorFlow's folder, to leave its code alone, as
    Keras's torch backend is imported) gets a spec without a location and carries on; a
    finder that raised would end that import, and with it the worker's start.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name == "tensorflow" or name.startswith("tensorflow."):
            return importlib.machinery.ModuleSpec(name, self, origin=None)
        return None

    def create_module(self, spec: Any) -> None:
        raise ModuleNotFoundError(
            "TensorFlow is kept out of this process: Keras runs on another backend",
            name=spec.name,
        )

    def exec_module(self, module: Any) -> None:  # never reached: create_module refuses
        raise ModuleNotFoundError(module.__name__, name=module.__name__)


def block_tensorflow() -> None:
    """Make ``import tensorflow`` fail in this process, for the JAX and PyTorch backends.

    Keras imports TensorFlow on any backend when it finds it installed (to recognise its
    types while serialising a layer, for one), which would cost a worker a second or
    more, hundreds of megabytes, and a GPU context it never uses. Keras takes an import
    that fails for TensorFlow being absent. Does nothing once TensorFlow is loaded.
    """
    if "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _RefuseTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RefuseTensorFlow())


def check_device(device: str) -> str:
    """Return ``device`` if it is ``auto``, ``cpu`` or ``cuda:N``; raise otherwise."""
    if not _DEVICE.match(device):
        raise BackendError(f"device must be auto, cpu or cuda:N (N a GPU index), got {device!r}")
    return device


def visible_gpus(environ: Mapping[str, str] | None = None, proc: Path | None = None) -> list[str]:
    """The NVIDIA GPUs this host lets the process use, by CUDA index, without importing CUDA.

    ``CUDA_VISIBLE_DEVICES``, when set, lists them (its entries are kept as written);
    otherwise the driver's ``/proc/driver/nvidia/gpus`` folder is counted.
    """
    env = os.environ if environ is None else environ
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        # CUDA stops at the first entry it cannot parse (-1 hides every GPU).
        gpus = []
        for entry in (e.strip() for e in listed.split(",")):
            if not entry or entry.startswith("-"):
                break
            gpus.append(entry)
        return gpus
    folder = proc or Path("/proc/driver/nvidia/gpus")
    try:
        return [str(i) for i in range(sum(1 for _ in folder.iterdir()))]
    except OSError:
        return []


def assign_device(setting: str, worker_index: int, gpus: Sequence[str]) -> str:
    """The device one worker process runs on: ``cpu`` or ``cuda:<GPU>``.

    Parameters
    ----------
    setting : str
        ``model.device``: ``auto`` spreads workers over ``gpus`` round robin (worker ``i``
        on GPU ``i mod len(gpus)``), or the CPU when there is none; ``cpu`` and
        ``cuda:N`` put every worker there.
    worker_index : int
        The worker's number, from 0.
    gpus : sequence of str
        :func:`visible_gpus`.

    Raises
    ------
    BackendError
        ``cuda:N`` names a GPU that is not among ``gpus``.
    """
    check_device(setting)
    if setting == "cpu":
        return "cpu"
    if setting == "auto":
        return f"cuda:{gpus[worker_index % len(gpus)]}" if gpus else "cpu"
    index = setting.removeprefix("cuda:")
    if index not in gpus:
        visible = ", ".join(gpus) or "none"
        raise BackendError(f"model.device is {setting}, but the visible GPUs are: {visible}")
    return setting


def select_device(device: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Make the backend, once imported, see only ``device`` (from :func:`assign_device`).

    ``cpu`` hides every GPU; ``cuda:N`` leaves only GPU ``N`` visible, where the backend
    then finds it as its first GPU. Call before anything imports a backend.
    """
    env = os.environ if environ is None else environ
    if check_device(device) == "auto":
        return
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        # JAX built with CUDA would otherwise warn at length before falling back.
        env["JAX_PLATFORMS"] = "cpu"
        return
    # Indices in the order nvidia-smi shows them, not CUDA's fastest-first.
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env["CUDA_VISIBLE_DEVICES"] = device.removeprefix("cuda:")


def describe_device() -> str:
    """What the loaded Keras backend computes on: ``CPU`` or ``cuda:N (GPU name)``.

    ``N`` is the GPU as the host numbers it (the entry of ``CUDA_VISIBLE_DEVICES``), not
    the backend's own index, so that workers pinned to different GPUs say which.
    Imports the backend's own module, never another.
    """
    import keras

    backend = keras.backend.backend()
    name: str | None = None
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        name = gpus[0].device_kind if gpus else None
    elif backend == "torch":
        import torch

        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    elif backend == "tensorflow":
        import tensorflow as tf

        found = tf.config.list_physical_devices("GPU")
        if found:
            details = tf.config.experimental.get_device_details(found[0])
            name = str(details.get("device_name", "GPU"))
    if name is None:
        return "CPU"
    gpus = visible_gpus()
    return f"cuda:{gpus[0] if gpus else 0} ({name})"
