"""``map`` over worker processes, for the CPU-bound per-study work of data preparation."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def process_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn`` over ``items``, in order; in ``workers`` processes when that is more than one.

    The processes are spawned, not forked: the caller may hold threads (a TensorFlow or
    JAX runtime, say). ``fn`` and the items must pickle. The pool lives until the
    iterator is exhausted.
    """
    jobs = list(items)
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(fn, jobs)
