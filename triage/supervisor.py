"""Child processes kept alive by a parent: receiver processes and inference workers.

:class:`Supervisor` holds one slot per child. It restarts a child that dies (at once if
the child had run for a while, after a doubling delay if it died young, so a child that
cannot start does not spin), stops them all with SIGTERM and then SIGKILL after a
deadline, and says how many are up. A child watches for its parent's death with
:class:`ParentWatch`, so that a parent killed outright leaves no orphan holding the port
or the database.

The signals between parent and children have one meaning each, sent by name:

- :data:`JOBS_QUEUED` (parent → workers): jobs were queued, look for one now;
- :data:`DELIVERIES_STORED` (worker → ``triage serve``): a result with deliveries was
  stored, dispatch it now;
- :data:`RELOAD` (parent → workers; admin → parent): re-read the thresholds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess

from triage.logs import get_logger

log = get_logger(__name__)

#: Parent → workers: jobs were queued; an idle worker looks for one at once.
JOBS_QUEUED = signal.SIGUSR1
#: Worker → ``triage serve``: a result with deliveries was stored; dispatch it at once.
DELIVERIES_STORED = signal.SIGUSR2
#: Re-read the thresholds (``triage reload`` to the daemon, the daemon to its workers).
RELOAD = signal.SIGHUP


def notify(pid: int, signum: signal.Signals) -> None:
    """Send ``signum`` to ``pid``; a process that has just exited is no error."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


class ParentWatch:
    """A child's check that the parent that started it is still there."""

    def __init__(self, parent_pid: int | None = None) -> None:
        self.parent_pid = parent_pid if parent_pid is not None else os.getppid()

    def gone(self) -> bool:
        """Whether the parent died: the child was re-parented (to init or a reaper)."""
        return os.getppid() != self.parent_pid


@dataclass(frozen=True)
class Restarts:
    """How a supervisor restarts a child that died.

    A child that ran ``stable_after`` seconds is restarted at once; one that died
    sooner waits ``first_backoff`` seconds, then twice as long each time it dies young
    again, up to ``max_backoff``.
    """

    stable_after: float
    first_backoff: float
    max_backoff: float


@dataclass(frozen=True)
class Supervision:
    """What a supervisor knows of its children: how many should run, how many are up,
    and how many restarts there have been since start-up."""

    expected: int
    up: int
    restarts: int


@dataclass
class _Slot:
    index: int
    process: SpawnProcess
    started_at: float
    backoff: float = 0.0
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Keeps ``count`` children of one kind alive.

    Parameters
    ----------
    kind : str
        ``receiver`` or ``worker``: the prefix of the log events
        (``<kind>_process_died``, ``_restarted``, ``_killed``).
    spawn : callable
        Starts the child for a slot index and returns its process.
    restarts : Restarts
        The restart policy.
    on_death : callable, optional
        Called with a dead child's pid once, when its death is noticed or it had to be
        killed (``killed`` true), e.g. to give back its jobs.
    """

    def __init__(
        self,
        kind: str,
        spawn: Callable[[int], SpawnProcess],
        restarts: Restarts,
        on_death: Callable[[int, bool], None] | None = None,
    ) -> None:
        self.kind = kind
        self._spawn = spawn
        self._restarts = restarts
        self._on_death = on_death
        self._slots: list[_Slot] = []
        self._stopping = False

    def start(self, count: int) -> list[SpawnProcess]:
        """Start ``count`` children; returns their processes in slot order."""
        for index in range(count):
            self._slots.append(_Slot(index, self._spawn(index), time.monotonic()))
        return [slot.process for slot in self._slots]

    def process(self, index: int) -> SpawnProcess:
        """The current process of slot ``index``."""
        return self._slots[index].process

    def check(self) -> None:
        """Restart the children that died, each when its backoff allows; called
        periodically by the parent's main loop."""
        if self._stopping:
            return
        now = time.monotonic()
        policy = self._restarts
        for slot in self._slots:
            process = slot.process
            if process.is_alive():
                continue
            if slot.restart_at is None:
                lived = now - slot.started_at
                slot.backoff = (
                    0.0
                    if lived >= policy.stable_after
                    else min(policy.max_backoff, max(policy.first_backoff, 2 * slot.backoff))
                )
                slot.restart_at = now + slot.backoff
                log.error(
                    f"{self.kind}_process_died",
                    **{f"{self.kind}_process": slot.index},
                    pid=process.pid,
                    exitcode=process.exitcode,
                    restart_in_seconds=slot.backoff,
                )
                if process.pid is not None and self._on_death is not None:
                    self._on_death(process.pid, False)
            if now >= slot.restart_at:
                process.close()  # reaped already: it was seen dead
                slot.process = self._spawn(slot.index)
                slot.started_at = now
                slot.restart_at = None
                slot.restarts += 1
                log.info(f"{self.kind}_process_restarted", **{f"{self.kind}_process": slot.index})

    def pids(self) -> list[int]:
        """The live children's process ids."""
        return [
            s.process.pid for s in self._slots if s.process.pid is not None and s.process.is_alive()
        ]

    def signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to every live child."""
        for slot in self._slots:
            if slot.process.is_alive() and slot.process.pid is not None:
                notify(slot.process.pid, signum)

    def supervision(self) -> Supervision:
        """How many children are up; safe to call from another thread.

        A child is up when its process runs and, if it was restarted, has run for
        ``stable_after`` seconds since: one that keeps dying counts as down from its
        first death. Read from what :meth:`check` recorded, without waiting on any
        process, so that this never races the main thread's reaping.
        """
        now = time.monotonic()
        up = sum(
            1
            for s in self._slots
            if s.restart_at is None
            and (s.restarts == 0 or now - s.started_at >= self._restarts.stable_after)
        )
        return Supervision(
            expected=len(self._slots), up=up, restarts=sum(s.restarts for s in self._slots)
        )

    def stop(self, timeout: float) -> list[int]:
        """SIGTERM every child, wait up to ``timeout`` seconds, then SIGKILL the rest.

        Returns the pids that had to be killed (``on_death`` is called for each).
        """
        self._stopping = True
        live = [s.process for s in self._slots if s.process.is_alive()]
        for process in live:
            process.terminate()
        deadline = time.monotonic() + timeout
        killed = []
        for process in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error(f"{self.kind}_process_killed", pid=process.pid)
                process.kill()
                process.join()
                if process.pid is not None:
                    killed.append(process.pid)
                    if self._on_death is not None:
                        self._on_death(process.pid, True)
        return killed
