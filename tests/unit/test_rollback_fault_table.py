"""The rollback path's fault table (issue 24): each fault against one rollback, through the production Controller.

v1 then v2 are approved and promoted; an on-call rollback asks for v1 while the fault is on. For every row the
table asserts what a user would notice: the stable Deployment ends on v1's SHA256 (what every answer carries),
exactly one incident and one page (pages counted by the incident they belong to, as PagerDuty's dedup_key does),
and a ledger that verifies. It prints fault → seconds from the request until v1 serves → incidents, pages.

Layer: the Controller, the reconciler, the engine and the action applier are the production code; the cluster,
the artifact store, the ledger and the notifier are in-memory fakes of their Protocols, so faults are exact and
time is simulated (each pass runs when the Controller asked to run again, failures after its own backoff). The
same rows on the real API server are the integration table's job (see docs/threat-model.md).

**Extending it** (standby, PostgreSQL, hostile tenants, leader failover): add a :class:`Fault` to :data:`FAULTS`
— a name, a window in simulated seconds after the request, and what it breaks (``store``, ``keys``, ``api``,
``ledger``) or a ``restart_at`` (the operator process dies and a fresh one takes over).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from modelwarden.adapters.artifact_store import ArtifactUnavailable, ByteLimits
from modelwarden.adapters.kube import KubeError
from modelwarden.adapters.manifests import ModelObject
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.decision import SignatureVerdict
from modelwarden.engine.ledger import Entry, chain, head_of, verify
from modelwarden.handlers.controller import RETRY_MAX_SECONDS, RETRY_MIN_SECONDS, Controller, retry_after_failures
from tests.unit.engine_world import SHA, T0, make_spec
from tests.unit.test_reconcile import KEY, FakeCluster, FakeRouter, approval, mlmodel

STEPS = {"steps": [{"setWeight": 100, "pauseSeconds": 0}]}
URI = {v: f"https://store.example/models/{v}/model.skops" for v in ("v1", "v2")}
SIGNED = {"signature": {"configMapName": "trusted-keys"}}
LIMIT_SECONDS = 900.0  # simulated: a rollback that has not finished by then fails its row
POD_READY_SECONDS = 1.0  # a changed Deployment's pods are Ready (and its watch event arrives) this much later


@dataclass(frozen=True)
class Fault:
    name: str
    # store, store-timeout, keys, api, ledger, notifier, grafana, die (the status write)
    breaks: frozenset[str] = frozenset()
    seconds: float = 0.0  # how long after the rollback request the fault lasts
    restart_at: float | None = None  # the operator is killed (state in memory lost) this long after the request
    signed: bool = False  # the spec requires a signature (the trusted keys are on the path)


FAULTS = [
    Fault("none"),
    Fault("artifact store 503 for 20 s", frozenset({"store"}), 20),
    Fault("artifact store times out for 20 s", frozenset({"store-timeout"}), 20),
    Fault("artifact store down 10 min (pages once while waiting)", frozenset({"store"}), 600),
    Fault("trusted keys unreadable (API 503) for 20 s", frozenset({"keys"}), 20, signed=True),
    Fault("API server 429 for 30 s", frozenset({"api"}), 30),
    Fault("ledger writes fail for 30 s", frozenset({"ledger"}), 30),
    Fault("pager answers 503 for 60 s", frozenset({"notifier"}), 60),
    Fault("Grafana answers 502 for 60 s", frozenset({"grafana"}), 60),
    Fault("kill -9 after moving traffic, before status write", frozenset({"die"}), 0.1, restart_at=0.2),
    Fault("kill -9 after the rollback's first status write", restart_at=0.5),
    Fault("kill -9 while waiting for a 503ing store", frozenset({"store"}), 20, restart_at=10),
    Fault("API server 429 for 30 s, kill -9 meanwhile", frozenset({"api"}), 30, restart_at=10),
    Fault("API server 429 for 10 min (pages once while failing)", frozenset({"api"}), 600),
]


@dataclass
class Switch:
    """Which faults are on now (the fakes read it)."""

    on: set[str] = field(default_factory=set)

    def check(self, what: str, message: str, status: int = 503) -> None:
        if what in self.on:
            raise KubeError(message, status)


class FaultyCluster(FakeCluster):
    """The fake cluster, whose writes answer 429 while the API server throttles; Deployments are Ready at once."""

    switch: Switch
    persisted: dict[str, Any] | None = None
    deleted: list[dict[str, Any]]

    async def apply_track(self, *args: Any, **kwargs: Any) -> None:
        self.switch.check("api", "apply Deployment: 429 Too Many Requests", 429)
        await super().apply_track(*args, **kwargs)

    async def delete_track(self, model: ModelObject, track: api.Track) -> None:
        self.switch.check("api", "delete Deployment: 429 Too Many Requests", 429)
        gone = self.deployments.get(track)
        await super().delete_track(model, track)
        if gone is not None:
            self.deleted.append(gone)

    def watch(self, controller: Controller) -> None:
        super().watch(controller)
        for body in self.deleted:
            controller.caches.observe_deployment("DELETED", body)
        self.deleted = []

    async def replace_status(self, body: dict[str, Any], status: api.MLModelStatus) -> dict[str, Any]:
        self.switch.check("die", "the operator process was killed before its status write", 0)
        self.switch.check("api", "replace status: 429 Too Many Requests", 429)
        written = await super().replace_status(body, status)
        self.persisted = written
        return written

    async def record_incident(self, model: ModelObject, rollback: api.Rollback) -> None:
        self.switch.check("api", "create ConfigMap: 429 Too Many Requests", 429)
        await super().record_incident(model, rollback)

    async def read_trusted_keys(self, namespace: str, config_map: str) -> list[bytes]:
        self.switch.check("keys", "get ConfigMap trusted-keys: 503 Service Unavailable")
        self.switch.check("api", "get ConfigMap trusted-keys: 429 Too Many Requests", 429)
        return [b"-----BEGIN PUBLIC KEY-----"]


@dataclass
class FaultyStore:
    switch: Switch

    async def sha256(self, uri: str, limits: ByteLimits) -> str:
        if "store" in self.switch.on:
            raise ArtifactUnavailable(f"GET {uri}: HTTP 503")
        if "store-timeout" in self.switch.on:
            raise ArtifactUnavailable(f"GET {uri}: ReadTimeout")
        return SHA[next(v for v, u in URI.items() if u == uri)]

    async def verify_signature(self, uri: str, trusted_keys: list[bytes], limits: ByteLimits) -> SignatureVerdict:
        await self.sha256(uri, limits)
        return SignatureVerdict(True, "SignatureVerified", "signed by a trusted key", "fp")

    async def read_json(self, uri: str) -> object:
        return {"status": "pass"}


@dataclass
class FaultyLedger:
    switch: Switch
    records: list[api.LedgerRecord] = field(default_factory=list)

    async def append(self, model: ModelObject, entries: Sequence[Entry], *, generation: int,
                     now: dt.datetime) -> api.LedgerHead | None:
        self.switch.check("ledger", "create ModelLedger: 503 Service Unavailable")
        known = {r.key for r in self.records}
        for e in entries:
            if e.key not in known:
                self.records.append(chain(self.records[-1] if self.records else None, e, model=model.name,
                                          model_uid=model.uid, generation=generation, now=now))
        return head_of(self.records[-1]) if self.records else None


@dataclass
class Pager:
    """The notifier: every notification sent, as (severity, rollback id)."""

    sent: list[tuple[str, str | None]] = field(default_factory=list)

    switch: Switch = field(default_factory=Switch)
    annotated: list[str] = field(default_factory=list)

    async def notify(self, model: str, namespace: str, severity: str, summary: str,
                     rollback: api.Rollback | None) -> str | None:
        if "notifier" in self.switch.on:
            return "HTTP 503: pager unavailable"
        self.sent.append((severity, rollback.id if rollback else None))
        return None

    async def annotate(self, model: str, namespace: str, rollback: api.Rollback) -> str | None:
        if "grafana" in self.switch.on:
            return "HTTP 502: Grafana unavailable"
        self.annotated.append(rollback.id)
        return None

    @property
    def pages(self) -> int:
        """Pages as a person gets them: one per incident, however often it is (re)sent."""
        return len({rid for severity, rid in self.sent if severity == "page"})


@dataclass
class FakeActionStatus:
    recorded: list[tuple[str, api.ModelActionStatus]] = field(default_factory=list)

    async def record(self, namespace: str, name: str, status: api.ModelActionStatus) -> None:
        self.recorded.append((name, status))


@dataclass
class Row:
    fault: str
    seconds_to_prior_sha: float
    seconds_to_done: float  # Halted: incident recorded, paged, ledger written
    incidents: int
    pages: int
    sent: int


class World:
    def __init__(self, signed: bool) -> None:
        self.switch = Switch()
        self.cluster = FaultyCluster(ready=True)
        self.cluster.switch, self.cluster.deleted = self.switch, []
        self.store, self.ledger = FaultyStore(self.switch), FaultyLedger(self.switch)
        self.pager = Pager(switch=self.switch)
        self.action_status = FakeActionStatus()
        self.action: dict[str, Any] | None = None
        self.router = FakeRouter()
        self.now = T0
        self.annotations: dict[str, str] = {}
        self.on_prior_at: dt.datetime | None = None  # when every answer first carried v1's SHA256 again
        self.signed = signed
        self.spec = self._spec("v1", signed)
        self.controller = self._operator()
        self.controller.caches.observe_model("ADDED", mlmodel(self.spec))
        for version in ("v1", "v2"):
            self.controller.caches.observe_approval("ADDED", self._approval("finance", "fiona", version))
            self.controller.caches.observe_approval("ADDED", self._approval("regulatory", "rick", version))

    def _approval(self, role: str, who: str, version: str) -> dict[str, Any]:
        """An approval given under the model's signature requirement (the signer's fingerprint when signed)."""
        body = approval(role, who, version)
        if self.signed:
            body["spec"]["signer"] = "fp"
        return body

    @staticmethod
    def _spec(version: str, signed: bool) -> api.MLModelSpec:
        artifact = {"uri": URI[version], "sha256": SHA[version], **(SIGNED if signed else {})}
        # No warm standby: the table is about the artifact store's path (the standby's is
        # tests/integration/test_real_node_standby.py and test_rollback_standby.py).
        return make_spec(version, artifact=artifact, rollout=STEPS, serving={"replicas": 2},
                         rollback={"standby": {"replicas": 0}})

    def _operator(self) -> Controller:
        return Controller(workloads=self.cluster, status_writer=self.cluster, events=self.cluster,
                          artifacts=self.store, reports=self.store, router_for=lambda spec: self.router,
                          clock=lambda: self.now, notifier=self.pager, annotator=self.pager, ledger=self.ledger,
                          action_status=self.action_status)

    def request_rollback(self) -> None:
        """On-call files a rollback ModelAction (the watch delivers it; outcomes come back the same way)."""
        self.action = {
            "metadata": {"namespace": KEY[0], "name": "credit-rollback-1", "uid": "a-rollback-1",
                         "resourceVersion": "1",
                         "creationTimestamp": self.now.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "spec": {"modelRef": {"name": KEY[1]}, "verb": "rollback", "requester": "oncall", "reason": "drill",
                     "modelUid": self.controller.models[KEY]["metadata"]["uid"]}}
        self.controller.caches.observe_action("ADDED", self.action)

    def deliver_action_outcomes(self) -> None:
        if self.action is not None and self.action_status.recorded:
            self.action = {**self.action, "status": self.action_status.recorded[-1][1].wire()}
            self.controller.caches.observe_action("MODIFIED", self.action)

    def restart(self) -> None:
        """kill -9: a new process with empty caches lists what the API server holds."""
        persisted = self.cluster.persisted
        assert persisted is not None
        self.controller = self._operator()
        meta = {**persisted["metadata"], "annotations": dict(self.annotations)}
        self.controller.caches.observe_model("ADDED", {**persisted, "metadata": meta, "spec": self.spec.wire()})
        for version in ("v1", "v2"):
            self.controller.caches.observe_approval("ADDED", self._approval("finance", "fiona", version))
            self.controller.caches.observe_approval("ADDED", self._approval("regulatory", "rick", version))
        self.cluster.watch(self.controller)
        if self.action is not None:
            self.controller.caches.observe_action("ADDED", self.action)

    def status(self) -> api.MLModelStatus:
        return api.MLModelStatus.model_validate(self.controller.models[KEY].get("status") or {})

    def edit(self, **changes: Any) -> None:
        """A person changes the model (spec, annotations): the watch delivers it."""
        body = self.controller.models[KEY]
        if "spec" in changes:
            self.spec = changes["spec"]
        self.annotations.update(changes.get("annotations", {}))
        meta = {**body["metadata"], "annotations": dict(self.annotations),
                "generation": body["metadata"]["generation"] + ("spec" in changes),
                "resourceVersion": str(self._bump())}
        edited = {**body, "metadata": meta, "spec": self.spec.wire()}
        self.cluster.persisted = {**(self.cluster.persisted or edited), "metadata": meta, "spec": edited["spec"]}
        self.controller.caches.observe_model("MODIFIED", edited)

    def _bump(self) -> int:
        self.cluster.resource_version += 1
        return self.cluster.resource_version

    def serving(self) -> str | None:
        """The SHA256 every answer carries: the stable Deployment's, with no canary beside it."""
        if "canary" in self.cluster.deployments or "stable" not in self.cluster.deployments:
            return None
        return str(self.cluster.deployments["stable"]["spec"]["template"]["metadata"]["annotations"]
                   [api.ANNOTATION_SHA256])

    def run_until(self, done: Any, fault: Fault | None = None, start: dt.datetime | None = None) -> float:
        """Passes as the Controller schedules them, until ``done()``; simulated seconds since ``start``."""
        start = start or self.now
        restarted = False
        while (self.now - start).total_seconds() < LIMIT_SECONDS:
            elapsed = (self.now - start).total_seconds()
            if fault is not None:
                self.switch.on = set(fault.breaks) if elapsed < fault.seconds else set()
                if fault.restart_at is not None and elapsed >= fault.restart_at and not restarted:
                    self.restart()
                    restarted = True
            calls = len(self.cluster.calls)
            wait = asyncio.run(self.controller.run_pass(KEY))
            self.cluster.watch(self.controller)
            self.deliver_action_outcomes()
            if self.on_prior_at is None and self.serving() == SHA["v1"]:
                self.on_prior_at = self.now
            if len(self.cluster.calls) != calls and wait is not None:
                wait = min(wait, POD_READY_SECONDS)  # the Deployment's watch event wakes the model
            if done():
                return elapsed
            self.now += dt.timedelta(seconds=max(0.5, min(wait if wait is not None else 60.0, 60.0)))
        pytest.fail(f"not done after {LIMIT_SECONDS:g} s: {self.status().model_dump_json(indent=1)}")


def promoted_v2(world: World, signed: bool) -> None:
    world.run_until(lambda: world.status().phase == api.Phase.STABLE)
    world.edit(spec=World._spec("v2", signed))
    world.run_until(lambda: world.status().phase == api.Phase.STABLE and world.serving() == SHA["v2"])


def run_row(fault: Fault) -> tuple[Row, World]:
    random.seed(24)  # the Controller's retry jitter: a reproducible table
    world = World(fault.signed)
    promoted_v2(world, fault.signed)
    assert world.pager.sent == []
    world.request_rollback()
    asked, world.on_prior_at = world.now, None
    done = world.run_until(lambda: world.status().phase == api.Phase.HALTED, fault)
    if fault.breaks & {"notifier", "grafana"}:  # the page and the annotation follow once they answer again
        world.run_until(lambda: world.pager.annotated != [] and world.pager.pages == 1, fault, start=asked)
    assert world.on_prior_at is not None
    return Row(fault.name, (world.on_prior_at - asked).total_seconds(), done, len(world.cluster.incidents),
               world.pager.pages, len(world.pager.sent)), world


TABLE: list[Row] = []


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_rollback_under_fault(fault: Fault) -> None:
    row, world = run_row(fault)
    TABLE.append(row)
    status = world.status()
    assert world.serving() == SHA["v1"], "every answer carries the prior approved SHA256"
    assert status.stable is not None and status.stable.sha256 == SHA["v1"]
    assert status.last_rollback is not None and status.last_rollback.to_sha256 == SHA["v1"]
    assert not [r for r in world.cluster.events if r[1] == api.Reason.TARGET_SHA256_MISMATCH], \
        "an unavailable dependency never rejects the target"
    assert (row.incidents, row.pages) == (1, 1), f"one incident, one page: {row}"
    assert list(world.cluster.incidents) == [status.last_rollback.id]
    assert world.pager.annotated == [status.last_rollback.id], "one Grafana annotation"
    assert verify(world.ledger.records, lambda record: True, head=status.ledger).ok
    decisions = [r.decision for r in world.ledger.records]
    assert decisions.count(api.Reason.ROLLBACK_STARTED) == 1 and decisions.count(api.Reason.ROLLBACK_COMPLETE) == 1
    if fault.seconds >= 600:
        assert row.sent == 2, "the long wait paged once, then the rollback's own page (one incident, one dedup key)"
    elif fault.restart_at is None:
        assert row.sent == 1, "a pass retried after a failure does not notify again"
    if fault.seconds >= 20 and fault.breaks & {"store", "store-timeout", "keys"}:
        waited = [t.event for t in status.last_rollback.timeline]
        assert any(e.startswith("WaitingFor") for e in waited), waited
        assert row.seconds_to_prior_sha >= fault.seconds, "nothing unverified was served meanwhile"


def test_zz_print_the_fault_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The table (run with -s to see it; the rows come from the parametrised test above, in this module)."""
    rows = TABLE or [run_row(f)[0] for f in FAULTS]
    lines = [f"{'fault':<56} {'s to prior SHA':>14} {'s to done':>9} {'incidents':>9} {'pages':>5} {'sent':>4}"]
    lines += [f"{r.fault:<56} {r.seconds_to_prior_sha:>14.1f} {r.seconds_to_done:>9.1f} {r.incidents:>9} "
              f"{r.pages:>5} {r.sent:>4}" for r in rows]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert all((r.incidents, r.pages) == (1, 1) for r in rows)


@pytest.mark.parametrize("failures", [1, 2, 3, 5, 8, 50])
def test_a_failed_pass_is_retried_with_a_bounded_jittered_backoff(failures: int) -> None:
    delays = {retry_after_failures(failures) for _ in range(50)}
    assert all(RETRY_MIN_SECONDS * 0.5 <= d <= RETRY_MAX_SECONDS for d in delays)
    assert len(delays) > 10, "models failing together do not retry in lockstep"
    assert max(delays) <= min(RETRY_MAX_SECONDS, RETRY_MIN_SECONDS * 2 ** (failures - 1))
