"""model.parallel.process_map: results in order, in worker processes or not."""

from __future__ import annotations

import math

import pytest

from model.parallel import over_ranges, process_map


@pytest.mark.parametrize(("workers", "ahead"), [(1, None), (2, None), (2, 1), (2, 3)])
def test_results_come_in_the_order_of_the_items(workers: int, ahead: int | None) -> None:
    items = [9.0, 4.0, 1.0, 16.0, 0.0]
    assert list(process_map(math.sqrt, items, workers, ahead)) == [3.0, 2.0, 1.0, 4.0, 0.0]


def test_an_error_in_a_worker_reaches_the_caller_at_its_item() -> None:
    results = process_map(math.sqrt, [4.0, -1.0, 9.0], 2, ahead=1)
    assert next(results) == 2.0
    with pytest.raises(ValueError, match="math domain error"):
        next(results)


@pytest.mark.parametrize(("n", "threads"), [(0, 4), (1, 4), (5, 1), (5, 2), (7, 3), (100, 8)])
def test_the_ranges_cover_every_index_once(n: int, threads: int) -> None:
    seen: list[int] = []  # list.extend holds the GIL: safe from several threads
    over_ranges(lambda part: seen.extend(range(n)[part]), n, threads)
    assert sorted(seen) == list(range(n))


def test_an_error_in_a_range_reaches_the_caller() -> None:
    def fail_on_the_last(part: slice) -> None:
        if part.stop == 10:
            raise ValueError("last range")

    with pytest.raises(ValueError, match="last range"):
        over_ranges(fail_on_the_last, 10, 3)
