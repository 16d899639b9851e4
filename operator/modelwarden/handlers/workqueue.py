"""A deduplicating work queue, as client-go's: a key waits at most once, and is never worked on by two
workers at a time; a key added while it is being processed is processed once more afterwards.

Two lanes: a key woken by a change (a watch event, a timer the engine asked for) goes before keys woken by a
periodic sweep (every model re-reading the evaluation cycle's numbers, the resync), so a rollback in flight never
waits behind a thousand unchanged models."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._lanes: dict[bool, deque[K]] = {True: deque(), False: deque()}  # urgent?
        self._waiting: dict[K, bool] = {}  # key -> the lane it waits in (a stale entry in the other is skipped)
        self._processing: set[K] = set()
        self._dirty: dict[K, bool] = {}
        self._timers: dict[K, tuple[asyncio.TimerHandle, bool]] = {}
        self._ready = asyncio.Event()

    def add(self, key: K, *, sweep: bool = False) -> None:
        urgent = not sweep
        if key in self._processing:
            self._dirty[key] = self._dirty.get(key, False) or urgent
            return
        waiting = self._waiting.get(key)
        if waiting is None or (urgent and not waiting):
            self._waiting[key] = urgent
            self._lanes[urgent].append(key)
            self._ready.set()

    def add_after(self, key: K, seconds: float, *, sweep: bool = False) -> None:
        """Add ``key`` after ``seconds``; an earlier pending timer for it wins, a later one is replaced."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, seconds)
        pending = self._timers.get(key)
        if pending is not None and not pending[0].cancelled() and pending[0].when() <= when:
            return
        if pending is not None:
            pending[0].cancel()
        self._timers[key] = (loop.call_at(when, self._fire, key), sweep)

    def _fire(self, key: K) -> None:
        _, sweep = self._timers.pop(key)
        self.add(key, sweep=sweep)

    def _pop(self) -> K | None:
        for urgent in (True, False):
            lane = self._lanes[urgent]
            while lane:
                key = lane.popleft()
                if self._waiting.get(key) is urgent:
                    del self._waiting[key]
                    return key
        return None

    async def get(self) -> K:
        while (key := self._pop()) is None:
            self._ready.clear()
            await self._ready.wait()
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        urgent = self._dirty.pop(key, None)
        if urgent is not None:
            self.add(key, sweep=not urgent)

    def __len__(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        for timer, _ in self._timers.values():
            timer.cancel()
        self._timers.clear()
