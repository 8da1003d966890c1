"""One supervisor for receiver processes and workers: restarts with backoff, stop then
kill, and one meaning per signal."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.context import SpawnProcess

import pytest

from triage.supervisor import (
    DELIVERIES_STORED,
    JOBS_QUEUED,
    RELOAD,
    ParentWatch,
    Restarts,
    Supervisor,
)


def _exit_at_once() -> None:
    raise SystemExit(3)


def _sleep() -> None:
    time.sleep(60)


def _ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def _spawner(target: Callable[[], None], started: list[float]) -> Callable[[int], SpawnProcess]:
    ctx = multiprocessing.get_context("spawn")

    def spawn(index: int) -> SpawnProcess:
        process = ctx.Process(target=target, name=f"test-child-{index}")
        process.start()
        started.append(time.monotonic())
        return process

    return spawn


def _until(condition: Callable[[], bool], supervisor: Supervisor, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        supervisor.check()
        time.sleep(0.02)


def test_a_child_that_dies_young_is_restarted_later_each_time() -> None:
    started: list[float] = []
    deaths: list[tuple[int, bool]] = []
    policy = Restarts(stable_after=60.0, first_backoff=0.3, max_backoff=0.6)
    supervisor = Supervisor(
        "test", _spawner(_exit_at_once, started), policy, lambda pid, k: deaths.append((pid, k))
    )
    supervisor.start(1)
    try:
        _until(lambda: len(started) == 4, supervisor)
    finally:
        supervisor.stop(5)
    gaps = [b - a for a, b in itertools.pairwise(started)]
    # 0.3 s, then doubled to 0.6 s, then held at the 0.6 s cap.
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6 and gaps[2] >= 0.6, gaps
    assert len(deaths) >= 3 and not any(killed for _, killed in deaths)
    health = supervisor.supervision()
    assert (health.expected, health.restarts) == (1, 3)
    assert health.up == 0  # it keeps dying: down from its first death


def test_a_child_that_ran_long_enough_is_restarted_at_once() -> None:
    started: list[float] = []
    policy = Restarts(stable_after=0.0, first_backoff=30.0, max_backoff=30.0)
    supervisor = Supervisor("test", _spawner(_sleep, started), policy)
    supervisor.start(2)
    try:
        victim = supervisor.process(1)
        assert victim.pid is not None
        victim.join(0)  # it runs
        os.kill(victim.pid, signal.SIGKILL)
        _until(lambda: len(started) == 3, supervisor, timeout=10)
        assert supervisor.process(1) is not victim
        assert len(supervisor.pids()) == 2
        assert supervisor.supervision().restarts == 1
    finally:
        assert supervisor.stop(10) == []  # both stop on SIGTERM


def test_stop_kills_a_child_that_ignores_sigterm_after_the_timeout() -> None:
    started: list[float] = []
    deaths: list[tuple[int, bool]] = []
    policy = Restarts(stable_after=10.0, first_backoff=1.0, max_backoff=1.0)
    supervisor = Supervisor(
        "test", _spawner(_ignore_sigterm, started), policy, lambda pid, k: deaths.append((pid, k))
    )
    (child,) = supervisor.start(1)
    time.sleep(1.0)  # let it install its handler
    begun = time.monotonic()
    assert supervisor.stop(0.5) == [child.pid]
    assert time.monotonic() - begun >= 0.5
    assert not child.is_alive()
    assert deaths == [(child.pid, True)]
    supervisor.check()  # stopping: nothing is restarted
    assert len(started) == 1


def test_a_parent_watch_tells_a_dead_parent_from_a_live_one() -> None:
    assert not ParentWatch().gone()
    assert ParentWatch(parent_pid=os.getppid() + 1).gone()


def test_each_wake_up_has_its_own_signal() -> None:
    assert len({JOBS_QUEUED, DELIVERIES_STORED, RELOAD}) == 3


@pytest.mark.parametrize("signum", [JOBS_QUEUED, RELOAD])
def test_signal_reaches_every_live_child(signum: signal.Signals) -> None:
    started: list[float] = []
    supervisor = Supervisor("test", _spawner(_sleep, started), Restarts(10.0, 1.0, 1.0))
    # Children inherit an ignored signal (under nohup SIGHUP is ignored): give them the
    # default action, which the assertion below relies on.
    inherited = signal.signal(signum, signal.SIG_DFL)
    try:
        children = supervisor.start(2)
    finally:
        signal.signal(signum, inherited)
    time.sleep(0.5)
    supervisor.signal(signum)  # neither handles it: its default action ends the child
    for child in children:
        child.join(10)
        assert child.exitcode == -signum
    supervisor.stop(5)
