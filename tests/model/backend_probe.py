"""Run bundles on one series in this process's Keras backend and print what came out.

``python tests/model/backend_probe.py SERIES BUNDLE [BUNDLE ...]`` runs each bundle
on the backend in ``KERAS_BACKEND``. ``python tests/model/backend_probe.py SERIES_DIR
--config CONFIG.yaml`` instead loads the configured bundle as a daemon worker process
does (:func:`triage.analyse.placement.load_predictor`, which sets the backend from
``model.backend``), after importing the worker's modules.

It prints one JSON object: a list of predictions (probabilities, backend, device) and
whether TensorFlow was loaded (its module, or its library in ``/proc/self/maps``). Each
backend needs a process of its own: Keras reads ``KERAS_BACKEND`` once, at its import.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any


def _load(target: str, config: bool) -> Any:
    if config:
        from triage.analyse.placement import load_predictor
        from triage.config import load_config

        return load_predictor(load_config(Path(target)))
    from model.quiet import quiet_keras_backend

    quiet_keras_backend()
    from model.predict import Predictor

    return Predictor.load(target, batch_size=8)


def _tensorflow_loaded() -> bool:
    """Whether TensorFlow's module or its native library is in this process."""
    maps = Path("/proc/self/maps")
    native = maps.exists() and "libtensorflow" in maps.read_text()
    return sys.modules.get("tensorflow") is not None or native


def main(argv: list[str]) -> int:
    series, targets = Path(argv[0]), argv[1:]
    config = targets[:1] == ["--config"]
    files = sorted(p for p in series.iterdir() if p.suffix == ".dcm")
    predictions = []
    for target in targets[1:] if config else targets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # untrained bundles warn
            prediction = _load(target, config).predict(files)
        predictions.append(
            {
                "backend": prediction.backend,
                "device": prediction.device,
                "stack": prediction.stack_probability,
                "raw_stack": prediction.raw_stack_probability,
                "folds": prediction.fold_stack_probabilities,
                "slices": prediction.slice_probabilities,
                "raw_slices": prediction.raw_slice_probabilities,
            }
        )
    print(json.dumps({"predictions": predictions, "tensorflow": _tensorflow_loaded()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
