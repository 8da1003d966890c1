"""SignalEvent: a threading.Event that signal handlers may set without deadlocking."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from triage.signal_event import SignalEvent


@pytest.fixture
def usr1_sets() -> Iterator[SignalEvent]:
    event = SignalEvent()
    previous = signal.signal(signal.SIGUSR1, lambda _s, _f: event.set())
    try:
        yield event
    finally:
        signal.signal(signal.SIGUSR1, previous)
        event.close()


def test_a_signal_wakes_a_wait_at_once(usr1_sets: SignalEvent) -> None:
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
    start = time.monotonic()
    assert usr1_sets.wait(30)
    assert time.monotonic() - start < 5


def test_a_signal_that_interrupts_clear_wins(usr1_sets: SignalEvent) -> None:
    # threading.Event deadlocks here: its clear() holds the lock that set() needs, and
    # the handler runs in the thread that holds it. The signal is raised inside clear()
    # by a profile hook, as one arriving at that moment would be.
    raised = []

    def raise_signal(_frame: object, event: str, arg: object) -> None:
        if not raised and event == "c_call" and getattr(arg, "__name__", "") == "read":
            raised.append(True)
            os.kill(os.getpid(), signal.SIGUSR1)

    usr1_sets.set()
    sys.setprofile(raise_signal)
    try:
        usr1_sets.clear()
    finally:
        sys.setprofile(None)
    assert raised
    # The set() that interrupted the clear() wins: its wake-up was drained, not its flag.
    assert usr1_sets.wait(5)


def test_clear_then_wait_times_out_without_spinning() -> None:
    event = SignalEvent()
    event.set()
    event.clear()
    start = time.process_time()
    assert not event.wait(0.3)
    assert time.process_time() - start < 0.2  # blocked in select, not a busy loop
    event.close()


def test_set_from_another_thread_wakes_the_waiter() -> None:
    event = SignalEvent()
    threading.Timer(0.1, event.set).start()
    assert event.wait(30)
    assert event.is_set()
    event.close()


def test_close_twice_closes_nothing_else() -> None:
    event = SignalEvent()
    event.close()
    other_read, other_write = os.pipe()  # may reuse the closed numbers
    event.close()
    os.write(other_write, b"x")
    assert os.read(other_read, 1) == b"x"
    os.close(other_read)
    os.close(other_write)


def test_the_first_signal_that_set_it_is_noted_for_the_loop_to_log() -> None:
    event = SignalEvent()
    previous = {
        sig: signal.signal(sig, lambda signum, _f: event.set(signum))
        for sig in (signal.SIGUSR1, signal.SIGUSR2)
    }
    try:
        event.set()  # from code, not a handler: nothing to note
        assert event.signum is None
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert event.wait(5)
        assert event.signum == signal.SIGUSR2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        event.close()
