"""``python -m model_server`` with a timeline recorder, for ``tail.py`` only (never in production).

Records, on the process's monotonic clock (``CLOCK_MONOTONIC``, the same clock as the client's), every
garbage collection (generation, pause), every call the feedback store thread runs (wall time and its CPU time:
wall minus CPU is waiting on the disk, i.e. commits and fsyncs), every drift computation, every wake-up of the
event loop that came more than 0.3 ms late (a loop stall: the loop was busy or could not get the GIL or the
core), and the server-side span of every request. Written as JSON to ``$TRACE_OUT`` at shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

from model_server import __main__ as server_main  # noqa: E402
from model_server import app as server_app  # noqa: E402
from model_server import drift as server_drift  # noqa: E402
from model_server import feedback as server_feedback  # noqa: E402
from model_server import lifecycle as server_lifecycle  # noqa: E402

T = TypeVar("T")
LATE_NS = 300_000
TICK_SECONDS = 0.001

events: list[tuple[str, int, int, int]] = []  # (kind, start ns, end ns, extra: CPU ns, objects collected...)
requests: list[tuple[int, int]] = []
_gc_started: dict[str, int] = {}


def _gc(phase: str, info: dict[str, Any]) -> None:
    now = time.monotonic_ns()
    if phase == "start":
        _gc_started["t"] = now
    elif "t" in _gc_started:
        events.append((f"gc gen{info['generation']}", _gc_started.pop("t"), now, int(info.get("collected", 0))))


def _timed(kind: str, fn: Callable[[], T]) -> Callable[[], T]:
    def run() -> T:
        t0, c0 = time.monotonic_ns(), time.thread_time_ns()
        try:
            return fn()
        finally:
            events.append((kind, t0, time.monotonic_ns(), time.thread_time_ns() - c0))
    return run


def install() -> None:
    gc.callbacks.append(_gc)

    store_run = server_feedback.StoreThread.run

    async def run(self: server_feedback.StoreThread, fn: Callable[[], T]) -> T:
        return await store_run(self, _timed("store thread call", fn))

    server_feedback.StoreThread.run = run  # type: ignore[method-assign]

    compute = server_drift.DriftWindow.compute

    def drift_compute(self: server_drift.DriftWindow, window: Any) -> dict[str, float]:
        return _timed("drift compute", lambda: compute(self, window))()

    server_drift.DriftWindow.compute = drift_compute  # type: ignore[method-assign]

    call = server_app.ModelServer.__call__

    async def traced_call(self: server_app.ModelServer, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await call(self, scope, receive, send)
            return
        t0 = time.monotonic_ns()
        await call(self, scope, receive, send)
        requests.append((t0, time.monotonic_ns()))

    server_app.ModelServer.__call__ = traced_call  # type: ignore[method-assign]

    startup, shutdown = server_lifecycle.Lifecycle.startup, server_lifecycle.Lifecycle.shutdown
    ticks: list[asyncio.Task[None]] = []

    async def tick() -> None:
        while True:
            due = time.monotonic_ns() + int(TICK_SECONDS * 1e9)
            await asyncio.sleep(TICK_SECONDS)
            late = time.monotonic_ns() - due
            if late > LATE_NS:
                events.append(("event loop late", due, due + late, 0))

    async def traced_startup(self: server_lifecycle.Lifecycle) -> None:
        await startup(self)
        if os.environ.get("GIL_SWITCH_SECONDS"):  # to compare with another interval in the same conditions
            sys.setswitchinterval(float(os.environ["GIL_SWITCH_SECONDS"]))
        ticks.append(asyncio.create_task(tick()))

    async def traced_shutdown(self: server_lifecycle.Lifecycle) -> None:
        for t in ticks:
            t.cancel()
        await shutdown(self)
        Path(os.environ["TRACE_OUT"]).write_text(json.dumps({"events": events, "requests": requests}))

    server_lifecycle.Lifecycle.startup = traced_startup  # type: ignore[method-assign]
    server_lifecycle.Lifecycle.shutdown = traced_shutdown  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    sys.exit(server_main.main())
