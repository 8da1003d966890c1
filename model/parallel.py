"""``map`` over worker processes, for the CPU-bound per-study work of data preparation."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def process_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int | None = None
) -> Iterator[R]:
    """``fn`` over ``items``, in order; in ``workers`` processes when that is more than one.

    The processes are spawned, not forked: the caller may hold threads (a TensorFlow or
    JAX runtime, say). ``fn`` and the items must pickle. The pool lives until the
    iterator is exhausted. ``ahead`` bounds the jobs handed to the pool and not yet
    taken by the caller, for results too large to wait in memory all at once (a
    preprocessed series is ~75 MB); None hands over every job at the start.
    """
    jobs = list(items)
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        if ahead is None:
            yield from pool.map(fn, jobs)
            return
        pending: deque[Future[R]] = deque()
        for job in jobs:
            pending.append(pool.submit(fn, job))
            if len(pending) >= max(ahead, 1):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
