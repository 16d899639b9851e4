"""CPU priority of the server's background threads, below the event loop that answers requests.

At nice 5 a request arriving during a records flush (5-15 ms of CPU on a one-core pod) waits for the
scheduler's time slice: the largest cause of the concurrency-1 p99 (``bench/server/README.md``, session 8). So
where ``STORE_THREAD_IDLE`` says the server's CPU cgroup is its own (the operator's pods), the feedback store
thread runs in the idle scheduling class (``SCHED_IDLE``): it gets the core only when the event loop does not
want it, and the kernel hands the core back the moment the loop wakes. Elsewhere it stays at nice 5: the idle
class yields to every other process of the cgroup, and beside a busy one (a build, on a machine without
containers) each call would wait seconds.

A thread in the idle class starves while the loop is saturated: left alone, 40 s at concurrency 32 dropped
40,304 records. So while a store call has made no progress for ``STARVED_AFTER_SECONDS`` and the thread
is runnable but got less than half a CPU (not waiting for the disk, the network or a lock, and not running
on another core), :class:`CoreLender` makes the loop sleep ``LEND_SECONDS`` every
``LEND_EVERY_SECONDS``: the store thread gets up to a fifth of the core when it needs it, and nothing while it
waits for PostgreSQL. An unprivileged thread can enter the idle class but never leave it, which is why the loop
lends time rather than raising the thread's priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time

BACKGROUND_NICE = 5  # the drift thread; the store thread outside the pods, or where the idle class is refused
STARVED_AFTER_SECONDS = 0.05  # a records flush takes 5-20 ms of wall time when it is not starved
LEND_SECONDS = 0.001
LEND_EVERY_SECONDS = 0.004


def background_priority() -> None:
    """Run the calling thread at nice ``BACKGROUND_NICE`` (Linux: ``setpriority`` on a thread id applies to that
    thread only; elsewhere, or if refused, nothing changes). Nice 5 rather than more: it still gives the thread
    about a quarter of a saturated core (at nice 10, 60 s at concurrency 32 left the store thread behind)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def cpu_seconds_if_runnable(native_id: int) -> float | None:
    """The thread's CPU time if it is running or waiting for a CPU (``R`` in ``/proc``), None if it sleeps
    (for the disk, the network or a lock); ``-1.0`` where ``/proc`` cannot be read."""
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as f:
            if f.read().rpartition(b")")[2].split()[0] != b"R":
                return None
        with open(f"/proc/self/task/{native_id}/schedstat", "rb") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return -1.0


class CoreLender:
    """Puts one worker thread in the idle class and lends it the event loop's core while it is starved.

    ``initializer`` runs in the worker thread; ``submitted`` and ``finished`` bracket each call on the loop."""

    def __init__(self) -> None:
        self._native_id: int | None = None  # the worker, once it runs in the idle class
        self._refused = False  # the idle class was refused: the worker runs at BACKGROUND_NICE, needs no loan
        self._in_flight = 0
        self._progress_at = 0.0  # when a call last finished, or was submitted to an idle worker
        self._timer: asyncio.TimerHandle | None = None
        self._sample: tuple[float, float] | None = None  # (when, the worker's CPU time then)
        self.lent_seconds = 0.0

    def initializer(self) -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            self._refused = True
            background_priority()
            return
        self._native_id = threading.get_native_id()

    def submitted(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._in_flight == 0:
            self._progress_at = time.monotonic()
        self._in_flight += 1
        if self._timer is None and not self._refused:
            self._timer = loop.call_later(STARVED_AFTER_SECONDS, self._check, loop)

    def finished(self) -> None:
        self._in_flight -= 1
        self._progress_at = time.monotonic()

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._in_flight == 0 or self._refused:
            self._sample = None
            return  # the next submission arms the check again
        now = time.monotonic()
        if self._native_id is not None and now - self._progress_at >= STARVED_AFTER_SECONDS and self._starved(now):
            time.sleep(LEND_SECONDS)  # blocks the loop on purpose: the core goes to the starved thread
            self.lent_seconds += LEND_SECONDS
        self._timer = loop.call_later(LEND_EVERY_SECONDS, self._check, loop)

    def _starved(self, now: float) -> bool:
        """Whether the worker wants a CPU and got less than half of one since the last check (on this core it
        waits for the loop; on another it would be running). True where ``/proc`` cannot be read: a starved
        thread is never left without time."""
        assert self._native_id is not None
        cpu = cpu_seconds_if_runnable(self._native_id)
        if cpu is None or cpu < 0:
            self._sample = None
            return cpu is not None
        previous, self._sample = self._sample, (now, cpu)
        return previous is not None and cpu - previous[1] < (now - previous[0]) / 2

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
