"""model.parallel.process_map: results in order, in worker processes or not."""

from __future__ import annotations

import math

import pytest

from model.parallel import process_map


@pytest.mark.parametrize(("workers", "ahead"), [(1, None), (2, None), (2, 1), (2, 3)])
def test_results_come_in_the_order_of_the_items(workers: int, ahead: int | None) -> None:
    items = [9.0, 4.0, 1.0, 16.0, 0.0]
    assert list(process_map(math.sqrt, items, workers, ahead)) == [3.0, 2.0, 1.0, 4.0, 0.0]


def test_an_error_in_a_worker_reaches_the_caller_at_its_item() -> None:
    results = process_map(math.sqrt, [4.0, -1.0, 9.0], 2, ahead=1)
    assert next(results) == 2.0
    with pytest.raises(ValueError, match="math domain error"):
        next(results)
