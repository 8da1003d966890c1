"""An event that a signal handler may set: no lock is taken, so it cannot deadlock.

A Python signal handler runs in the main thread between two bytecodes, and so possibly
while the main thread holds a lock. ``threading.Event.set`` takes the event's lock, which
``Event.clear`` and ``Event.wait`` hold for a few bytecodes: a handler that sets an event
while the main thread is in one of those waits for itself, forever (CPython's signal
documentation warns of it; gh-126434 is the multiprocessing form). ``triage serve`` did
exactly that under a burst of :data:`~triage.supervisor.DELIVERIES_STORED` signals, and
then never answered SIGTERM.

:class:`SignalEvent` keeps its state in a plain attribute, which a handler writes without
a lock, and wakes its waiters through a pipe, which a handler writes with one system call.
"""

from __future__ import annotations

import contextlib
import os
import select
import time


class SignalEvent:
    """``threading.Event``'s ``set``, ``is_set``, ``clear`` and ``wait``, safe in a
    signal handler.

    The flag is the truth; the pipe only wakes :meth:`wait`. A waiter wakes when the
    event is set, from a handler or another thread, and at the latest at its timeout.
    """

    def __init__(self) -> None:
        self._flag = False
        #: The first signal whose handler set the event, for the loop to log (a handler
        #: must not log: the logging lock is not reentrant either).
        self.signum: int | None = None
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        # Non-blocking: a handler must never wait on a full pipe. A full pipe already
        # wakes every waiter, so a byte that does not fit is not missed.
        os.set_blocking(self._write_fd, False)

    def set(self, signum: int | None = None) -> None:
        """Set the flag and wake the waiters; a signal handler may call it, passing its
        signal number to be noted in :attr:`signum`."""
        if signum is not None and self.signum is None:
            self.signum = signum
        self._flag = True  # before the byte: a waiter woken by it finds the flag set
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write_fd, b"\0")

    def is_set(self) -> bool:
        """Whether the event is set."""
        return self._flag

    def clear(self) -> None:
        """Reset the flag. A :meth:`set` that interrupts this call wins: the flag is
        cleared first and the wake-up bytes drained after."""
        self._flag = False
        self._drain()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the event is set or ``timeout`` seconds pass; return the flag."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._flag:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            readable, _, _ = select.select([self._read_fd], [], [], remaining)
            if readable and not self._flag:
                # A byte from a set() that a clear() has since undone: without draining
                # it, select would return at once and this loop would spin.
                self._drain()
        return self._flag

    def close(self) -> None:
        """Close the pipe (once); the event must not be used afterwards."""
        fds, self._read_fd, self._write_fd = (self._read_fd, self._write_fd), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._read_fd, 4096):
                pass

    def __del__(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # __init__ may not have run
            self.close()
