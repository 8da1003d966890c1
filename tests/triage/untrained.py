"""A small untrained bundle and its predictor, for tests that run a real worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def load_untrained_predictor(folder: Path) -> Any:
    """Write an untrained small bundle to ``folder`` and load it (thresholds 0.5)."""
    from model.bundle import init_bundle
    from model.predict import Predictor

    bundle = folder / "untrained"
    init_bundle(bundle, backbone="small", input_size=32, num_slices=16, seed=0)
    with pytest.warns(UserWarning, match="untrained"):
        return Predictor.load(bundle)
