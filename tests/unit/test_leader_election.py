"""Leader election: the pure decision as a table, the record it writes, and the elector's loop against an in-memory
Lease store with client-go's semantics (resourceVersion conflicts), at sub-second timings."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import urllib.request
from typing import Any

import pytest

from modelwarden.adapters.kube import Conflict, KubeError
from modelwarden.handlers import metrics
from modelwarden.handlers.leader import (
    ElectionConfig,
    LeaderElector,
    LeaseRecord,
    may_hold,
    microtime,
    next_record,
    released,
)
from modelwarden.handlers.operator import Feed

ME, OTHER = "pod-a_1", "pod-b_2"
HELD = LeaseRecord(holder=OTHER, duration_seconds=15, renew_time="2026-01-01T00:00:00.000000Z", transitions=3)


@pytest.mark.parametrize(
    ("record", "now", "observed_at", "expected"),
    [
        (None, 0.0, 0.0, True),                                   # no lease yet: create it
        (LeaseRecord(holder=""), 0.0, 0.0, True),                 # released: take it at once
        (LeaseRecord(holder=ME, duration_seconds=15), 100.0, 0.0, True),  # ours, even if we were slow: keep it
        (HELD, 10.0, 0.0, False),                                 # someone else's, renewed 10 s ago
        (HELD, 14.999, 0.0, False),                               # ... just before expiry
        (HELD, 15.0, 0.0, True),                                  # ... expired as observed here
        (HELD, 115.0, 100.0, True),
        (HELD, 114.0, 100.0, False),                              # seen changing late: the clock starts then
        (LeaseRecord(holder=OTHER, duration_seconds=1), 1.0, 0.0, True),  # a release's 1 s duration
    ],
)
def test_may_hold(record: LeaseRecord | None, now: float, observed_at: float, expected: bool) -> None:
    assert may_hold(record, ME, now, observed_at) is expected


def test_next_record_renews_or_takes_over() -> None:
    t0 = dt.datetime(2026, 1, 1, 0, 0, 0, tzinfo=dt.UTC)
    t1 = t0 + dt.timedelta(seconds=2, microseconds=5)
    first = next_record(None, ME, t0, 15)
    assert first == LeaseRecord(holder=ME, duration_seconds=15, acquire_time="2026-01-01T00:00:00.000000Z",
                                renew_time="2026-01-01T00:00:00.000000Z", transitions=0)
    renewed = next_record(first, ME, t1, 15)
    assert renewed.acquire_time == first.acquire_time and renewed.transitions == 0
    assert renewed.renew_time == "2026-01-01T00:00:02.000005Z"
    taken = next_record(HELD, ME, t1, 15)
    assert taken.holder == ME and taken.transitions == 4 and taken.acquire_time == microtime(t1)
    gone = released(taken, t1)
    assert gone.holder == "" and gone.duration_seconds == 1 and gone.transitions == 4
    assert gone.spec()["holderIdentity"] is None
    assert LeaseRecord.from_spec(taken.spec()) == taken


@pytest.mark.parametrize(("duration", "deadline", "retry"), [(10, 10, 2), (15, 10, 9), (15, 20, 2), (1, 0.5, 0)])
def test_config_refuses_unsafe_timings(duration: float, deadline: float, retry: float) -> None:
    with pytest.raises(ValueError, match="lease duration"):
        ElectionConfig("ns", "lease", ME, duration, deadline, retry)


class MemoryLeases:
    """The API server's Lease semantics that matter here: create conflicts, update needs the current resourceVersion."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False
        self.writes = 0

    def _check(self) -> None:
        if self.down:
            raise KubeError("connection refused")

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.lease)

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if self.lease is not None:
            raise Conflict("exists", 409)
        return self._store(body)

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise Conflict("stale resourceVersion", 409)
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.writes += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    @property
    def holder(self) -> str:
        return LeaseRecord.from_spec((self.lease or {}).get("spec")).holder


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when every task waits: a sleep takes no real time, and the durations
    below are exact whatever the machine's load (no wall-clock timing in unit tests)."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        select = self._selector.select  # type: ignore[attr-defined]

        def advance_instead_of_blocking(timeout: float | None = None) -> Any:
            ready = select(0)
            if not ready and timeout:
                self._now += timeout
            return ready

        self._selector.select = advance_instead_of_blocking  # type: ignore[attr-defined]

    def time(self) -> float:
        return self._now


def run_virtual(scenario: Any) -> None:
    loop = VirtualClockLoop()
    try:
        loop.run_until_complete(scenario)
    finally:
        loop.close()


class Candidate:
    def __init__(self, leases: MemoryLeases, identity: str) -> None:
        self.started = asyncio.Event()
        self.stopped: list[str] = []
        self.elector = LeaderElector(
            leases, ElectionConfig("ns", "lease", identity, lease_duration=1.0, renew_deadline=0.6, retry_period=0.2),
            on_started=self._started, on_stopped=self.stopped.append,
            clock=lambda: asyncio.get_running_loop().time())

    async def _started(self) -> None:
        self.started.set()


async def _wait(predicate: Any, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not predicate():
        assert loop.time() - began < timeout, "timed out"
        await asyncio.sleep(0.02)
    return loop.time() - began


def test_one_leader_release_hands_over_at_once_and_a_crash_after_the_lease_duration() -> None:
    async def scenario() -> None:
        leases = MemoryLeases()
        a, b = Candidate(leases, "a"), Candidate(leases, "b")
        a.elector.start()
        await asyncio.wait_for(a.started.wait(), 2)
        b.elector.start()
        await asyncio.sleep(1.5)  # longer than the lease duration: a keeps renewing, b never takes it
        assert leases.holder == "a" and a.elector.leading and not b.elector.leading and not b.started.is_set()
        assert metrics.LEADER._value.get() == 1

        await a.elector.release()  # clean shutdown
        assert leases.holder == "" and not a.stopped
        handover = await _wait(b.started.is_set, 2)
        assert handover < 0.5, handover  # one retry period, not a lease duration
        assert leases.holder == "b"

        c = Candidate(leases, "c")
        c.elector.start()
        assert b.elector._task is not None
        b.elector._task.cancel()  # a crash: b stops renewing and does not release
        failover = await _wait(c.started.is_set, 3)
        assert 0.6 <= failover <= 1.0 + 0.2 * 1.2 + 0.3, failover  # about one lease duration
        assert LeaseRecord.from_spec(leases.lease["spec"] if leases.lease else None).transitions == 2
        await c.elector.release()
        await b.elector.release()

    run_virtual(scenario())


def test_a_leader_that_cannot_renew_or_sees_another_holder_stops() -> None:
    async def scenario() -> None:
        leases = MemoryLeases()
        a = Candidate(leases, "a")
        a.elector.start()
        await asyncio.wait_for(a.started.wait(), 2)
        leases.down = True
        took = await _wait(lambda: bool(a.stopped), 2)
        assert 0.4 <= took <= 1.0, took  # the renew deadline (0.6 s), before the lease (1 s) could expire elsewhere
        assert "renew deadline" in a.stopped[0] and not a.elector.leading and metrics.LEADER._value.get() == 0

        leases.down = False
        b = Candidate(leases, "b")
        b.elector.start()
        await asyncio.wait_for(b.started.wait(), 3)
        assert leases.lease is not None
        leases.lease["spec"]["holderIdentity"] = "intruder"  # someone took it (e.g. by hand)
        await _wait(lambda: bool(b.stopped), 1)
        assert "held by intruder" in b.stopped[0]
        await a.elector.release()
        await b.elector.release()
        assert leases.holder == "intruder"  # not ours to release

    run_virtual(scenario())


class RecordingController:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def observe_model(self, event_type: str | None, body: dict[str, Any]) -> None:
        self.calls.append(("model", (event_type, body["metadata"]["name"])))

    def observe_approval(self, event_type: str | None, body: dict[str, Any]) -> None:
        self.calls.append(("approval", (event_type, body["metadata"]["name"])))

    def observe_deployment(self, event_type: str | None, body: dict[str, Any]) -> None:
        self.calls.append(("deployment", (event_type, body["metadata"]["name"])))

    def prime(self, snapshot: dict[str, Any]) -> None:
        self.calls.append(("prime", sorted(snapshot)))


def test_feed_replays_events_that_arrive_during_the_listing_on_top_of_it() -> None:
    async def scenario() -> None:
        controller = RecordingController()
        feed = Feed(controller)  # type: ignore[arg-type]
        listing_started = asyncio.Event()
        release_listing = asyncio.Event()

        async def listing() -> dict[str, list[dict[str, Any]]]:
            listing_started.set()
            await release_listing.wait()
            return {"mlmodels": [], "modelapprovals": [], "deployments": []}

        feed.observe("model", "ADDED", {"metadata": {"name": "before"}})
        priming = asyncio.create_task(feed.prime(listing()))
        await listing_started.wait()
        feed.observe("deployment", "DELETED", {"metadata": {"name": "during"}})
        release_listing.set()
        await priming
        feed.observe("model", "MODIFIED", {"metadata": {"name": "after"}})
        assert controller.calls == [
            ("model", ("ADDED", "before")),
            ("deployment", ("DELETED", "during")),
            ("prime", ["deployments", "mlmodels", "modelapprovals"]),
            ("deployment", ("DELETED", "during")),  # replayed after the listing
            ("model", ("MODIFIED", "after")),
        ]

    asyncio.run(scenario())


def test_a_rollback_counts_once() -> None:
    before = metrics.ROLLBACKS._value.get()
    metrics.rollback_started("ns", "m", "rb-1")
    metrics.rollback_started("ns", "m", "rb-1")  # the same rollback decided again
    metrics.rollback_started("ns", "m", "rb-2")
    metrics.rollback_started("other", "m", "rb-1")  # another model rolled back in the same evaluation
    assert metrics.ROLLBACKS._value.get() == before + 3


def test_metrics_endpoint_serves_the_operator_metrics() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        metrics.parse_address("8080")
    assert metrics.parse_address("") is None
    assert metrics.parse_address("[::1]:9000") == ("::1", 9000)
    server = metrics.serve("127.0.0.1:0")
    assert server is not None
    try:
        metrics.track_sizes(lambda: 3, lambda: 1)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    for line in ('modelwarden_reconcile_total{result="success"}', 'modelwarden_reconcile_total{result="error"}',
                 "modelwarden_reconcile_duration_seconds_bucket", "modelwarden_evaluation_duration_seconds_count",
                 "modelwarden_evaluation_queries", "modelwarden_models 3.0", "modelwarden_workqueue_depth 1.0",
                 "modelwarden_leader", "modelwarden_rollbacks_total"):
        assert line in text, line
