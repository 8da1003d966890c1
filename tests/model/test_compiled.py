"""The batching shared by the predictor and training's encoder (model.compiled)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from model.compiled import run_in_batches


@pytest.mark.parametrize(("pad", "expected_sizes"), [(False, [4, 4, 2]), (True, [4, 4, 4])])
def test_run_in_batches_keeps_order_and_pads_only_when_asked(
    pad: bool, expected_sizes: list[int]
) -> None:
    images = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    sizes: list[int] = []

    def function(batch: Any) -> Any:
        sizes.append(len(batch))
        return batch.sum(axis=1, keepdims=True)

    out = run_in_batches(function, images, 4, pad=pad)
    # The padding's outputs are dropped: one output per image, in the images' order.
    np.testing.assert_array_equal(out, images.sum(axis=1, keepdims=True))
    assert sizes == expected_sizes
