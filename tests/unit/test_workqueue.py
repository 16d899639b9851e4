"""The controller's work queue: deduplication, one worker per key, and change before sweep."""

from __future__ import annotations

import asyncio

from modelwarden.handlers.workqueue import WorkQueue


def drain(queue: WorkQueue[str]) -> list[str]:
    async def run() -> list[str]:
        out = []
        while len(queue):
            key = await queue.get()
            out.append(key)
            queue.done(key)
        return out

    return asyncio.run(run())


def test_a_key_waits_once() -> None:
    q: WorkQueue[str] = WorkQueue()
    for key in ("a", "b", "a", "a"):
        q.add(key)
    assert drain(q) == ["a", "b"]


def test_a_change_goes_before_a_sweep_even_when_the_sweep_queued_it_first() -> None:
    q: WorkQueue[str] = WorkQueue()
    for key in ("m1", "m2", "m3", "m4"):
        q.add(key, sweep=True)
    q.add("m3")  # its Deployment just became ready: a rollback in flight must not wait for m1, m2
    q.add("new")
    q.add("m1", sweep=True)  # already waiting: no second entry
    assert drain(q) == ["m3", "new", "m1", "m2", "m4"]


def test_a_key_added_while_processing_runs_once_more_afterwards_never_twice_at_once() -> None:
    async def run() -> list[str]:
        q: WorkQueue[str] = WorkQueue()
        q.add("a")
        key = await q.get()
        q.add("a")  # while "a" is being processed
        q.add("a", sweep=True)
        assert len(q) == 0  # not handed to a second worker
        q.done(key)
        assert len(q) == 1
        again = await q.get()
        q.done(again)
        return [key, again]

    assert asyncio.run(run()) == ["a", "a"]


def test_add_after_keeps_the_earliest_timer_and_its_lane() -> None:
    async def run() -> list[str]:
        q: WorkQueue[str] = WorkQueue()
        q.add("other", sweep=True)
        q.add_after("late", 0.05)
        q.add_after("late", 5.0)  # later than the pending timer: ignored
        await asyncio.sleep(0.1)
        out = [await q.get() for _ in range(2)]
        q.close()
        return out

    assert asyncio.run(run()) == ["late", "other"]
