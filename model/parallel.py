"""CPU-bound work spread over cores: studies over processes, slices over threads.

- :func:`process_map`: ``map`` over worker processes, for the per-study work of data
  preparation (each study holds the GIL for long stretches of Python).
- :func:`over_ranges`: one study's per-slice array work over threads, where NumPy
  releases the GIL (the worker's preprocessing, on the critical path of every study).
- :func:`spawned_pool`: processes kept for a worker's lifetime, for per-slice work that
  holds the GIL (decoding compressed pixel data).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from itertools import pairwise
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def process_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int | None = None
) -> Iterator[R]:
    """``fn`` over ``items``, in order; in ``workers`` processes when that is more than one.

    The processes come from :func:`spawned_pool`. ``fn`` and the items must pickle. The
    pool lives until the iterator is exhausted. ``ahead`` bounds the jobs handed to the
    pool and not yet taken by the caller, for results too large to wait in memory all at
    once (a preprocessed series is ~75 MB); None hands over every job at the start.
    """
    jobs = list(items)
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    pool = spawned_pool(workers)
    assert pool is not None  # more than one worker here
    with pool:
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


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container may limit)."""
    return len(os.sched_getaffinity(0))


def over_ranges(fn: Callable[[slice], None], n: int, threads: int) -> None:
    """Call ``fn`` on contiguous ranges that together cover ``range(n)``, in threads.

    For work that is independent per slice and spends its time in NumPy, which releases
    the GIL: ``fn`` writes its range's results in place. With ``threads`` of one (or
    fewer than two items), one call on the whole range, in this thread. Twice as many
    ranges as threads, so that one slow range does not leave the other threads idle.
    The first error raised in a range reaches the caller, after every range has ended.
    """
    if threads <= 1 or n < 2:
        fn(slice(0, n))
        return
    parts = min(n, 2 * threads)
    bounds = [n * k // parts for k in range(parts + 1)]
    with ThreadPoolExecutor(min(threads, parts)) as pool:
        futures = [pool.submit(fn, slice(a, b)) for a, b in pairwise(bounds)]
    for future in futures:
        future.result()


def spawned_pool(workers: int) -> ProcessPoolExecutor | None:
    """A pool of ``workers`` spawned processes that outlives one call; None for one worker.

    Spawned, not forked: the caller may hold threads (a TensorFlow or JAX runtime, say).
    The processes start with the first job, not here, and end with the pool (at the
    latest when this process exits).
    """
    if workers <= 1:
        return None
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
