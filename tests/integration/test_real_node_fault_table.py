"""The rollback fault table on the real node, through the model's Service (issue 24).

Each row, in a fresh namespace under the ``restricted`` Pod Security level: v1 then v2 approved and promoted on the
real node (``bench/rollback_standby.py``'s story), the operator a real process (``OperatorProcess``, the
least-privilege user) paging a real webhook receiver on loopback; the fault injected; ``modelwarden rollback`` as
on-call. Answers are counted from the ``x-model-sha256`` response header of predictions sent to the Service's
ClusterIP through kube-proxy, a new connection each. Each row asserts: every answer ends on v1's SHA256; exactly one
incident and one page (pages counted by the incident they carry, as PagerDuty's dedup_key does); ``modelwarden
ledger verify`` passes with one RollbackStarted and one RollbackComplete; the target was never rejected. It prints
fault → seconds from the request until every answer carries v1's SHA256 → seconds until the rollback is done →
incidents, pages.

The faults are real: the artifact server answers 503, or is stopped (the warm standby serves); PostgreSQL (the
models' shared feedback store) is stopped; every request of the operator is answered 429 for 30 s; the leader of two
operator processes is killed with SIGKILL; another namespace's ten hostile artifacts are being verified by the same
operator. The 429s come from a front on loopback between the operator process and
the real API server (``localenv/apiserver_front.py``: the operator's own token passed through, every other request
forwarded, watches streamed): API Priority and Fairness cannot refuse every request of one user (a priority level of
zero seats still admits a request whenever none of its own is executing — 120 requests of the operator's user all
answered 200), and an admission webhook answering 429 did not get the API server to answer 429.

    bash realnode.sh .venv/bin/python -m pytest tests/integration/test_real_node_fault_table.py -q -s [-k <row id>]
"""

from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from bench.rollback_standby import MODEL, Story, build_artifacts, wait_for
from localenv.apiserver_front import APIServerFront
from localenv.artifacts import ArtifactServer
from localenv.cluster import Cluster
from localenv.hostile_store import HostileModel, HostileStore, signed_directory, ten_hostile_models, write_key
from localenv.modelwarden import OperatorProcess, trust_artifact_keys
from localenv.postgres import Postgres
from modelwarden.api import v1alpha1 as api
from tests.integration.incidents import Pager, ledger_decisions, serving
from tests.integration.modelwarden_helpers import (
    LEADER_ELECTION_ENV,
    Models,
    campaign_identity,
    lease_holder,
    mlmodel,
)
from tests.integration.test_ledger import verify

RESYNC_SECONDS = 5
OPERATOR_ENV = {"MODELWARDEN_RESYNC_SECONDS": str(RESYNC_SECONDS)}


@dataclass
class Rig:
    """What a row works with: the story, the artifact store, the pager, the operator processes."""

    cluster: Cluster
    request: pytest.FixtureRequest
    story: Story
    store: ArtifactServer
    pager: Pager
    tmp_path: Path
    operators: list[OperatorProcess] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def start_operator(self, env: dict[str, str] | None = None, kubeconfig: Path | None = None) -> OperatorProcess:
        # The row's namespace only: what other tests left in the cluster is not this row's to reconcile or page for.
        proc = OperatorProcess(self.cluster, self.tmp_path / f"operator-{len(self.operators)}.log", env={
            **OPERATOR_ENV, "MODELWARDEN_NAMESPACES": self.story.namespace, "MODELWARDEN_WEBHOOK_URL": self.pager.url,
            **(env or {})}, kubeconfig=kubeconfig).start()
        self.operators.append(proc)
        return proc

    def check_alive(self) -> None:
        for proc in self.operators:
            if proc.process is not None:
                proc.check_alive()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-4000:]}" for p in self.operators)


class Fault:
    """One row: its hooks run around the on-call rollback; each lift is idempotent (also run on failure)."""

    name = ""  # the table's line
    id = ""  # the pytest parameter's: -k store-503-20s
    standby_replicas = 0  # the artifact store's path: no warm standby, unless the row is about it

    def start_operators(self, rig: Rig) -> None:
        rig.start_operator()

    def feedback_store(self, rig: Rig) -> dict[str, Any] | None:
        return None

    def before(self, rig: Rig) -> None:
        """Just before the request (after v2 is promoted and every answer is v2's)."""

    def meanwhile(self, rig: Rig, elapsed: float) -> None:
        """Once the request is filed, then before each look at the answers."""

    def on_prior(self, rig: Rig) -> None:
        """Every answer is v1's; the fault may still be in force."""

    def lift(self, rig: Rig) -> None:
        """The dependency is back."""

    def check(self, rig: Rig, status: api.MLModelStatus) -> None:
        """The row's own assertions, once the rollback is done and the fault lifted."""


class StoreUnavailable(Fault):
    name = "artifact store 503 for 20 s"
    id = "store-503-20s"
    seconds = 20.0

    def before(self, rig: Rig) -> None:
        rig.store.unavailable_for(self.seconds)

    def lift(self, rig: Rig) -> None:
        rig.store.unavailable_for(0)

    def check(self, rig: Rig, status: api.MLModelStatus) -> None:
        assert rig.store.answered_503 > 0, "the fault was not seen"
        assert status.last_rollback is not None
        events = [t.event for t in status.last_rollback.timeline]
        assert api.Reason.WAITING_FOR_ARTIFACT_STORE in events, events


class StoreDownStandby(Fault):
    name = "artifact store down, warm standby on"
    id = "store-down-standby"
    standby_replicas = 1

    def before(self, rig: Rig) -> None:
        rig.store.close()

    def check(self, rig: Rig, status: api.MLModelStatus) -> None:
        assert status.last_rollback is not None
        assert "StandbyServing" in [t.event for t in status.last_rollback.timeline]


def _call(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any], str]:
    """One request on a new connection: status, JSON body (or {}), Retry-After."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json", "Connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), dict(json.load(resp)), str(resp.headers.get("Retry-After", ""))
    except urllib.error.HTTPError as e:
        return e.code, {}, str(e.headers.get("Retry-After", ""))


class PostgresDown(Fault):
    """The models' shared feedback store (PostgreSQL, DSN from the namespace's Secret) stopped before the request and
    started again once every answer is v1's: the restored pods start and serve without it, feedback answers 503
    (never a false 201), and every label acknowledged before the outage reads back after it."""

    name = "PostgreSQL down during the rollback"
    id = "postgres-down"

    def __init__(self) -> None:
        self.pg: Postgres | None = None
        self.stopped = False
        self.acknowledged: list[str] = []
        self.during_outage: list[str] = []

    def feedback_store(self, rig: Rig) -> dict[str, Any] | None:
        self.pg = rig.request.getfixturevalue("pod_reachable_postgres")
        return dict(rig.request.getfixturevalue("pods_feedback_store"))

    def predict(self, rig: Rig) -> str:
        features = dict.fromkeys(rig.story.artifacts["v1"].features, 0.3)
        code, body, _ = _call(f"{rig.story.service_url()}/predict", {"features": features})
        assert code == 200, code
        return str(body["predictionId"])

    def label(self, rig: Rig, prediction_id: str) -> tuple[int, str]:
        code, _, retry_after = _call(f"{rig.story.service_url()}/feedback", {
            "predictionId": prediction_id, "label": 1, "severity": "minor", "stakeholder": "finance"})
        return code, retry_after

    def acknowledges(self, rig: Rig, prediction_id: str) -> bool:
        return self.label(rig, prediction_id)[0] == 201

    def before(self, rig: Rig) -> None:
        for _ in range(5):
            pid = self.predict(rig)
            wait_for(functools.partial(self.acknowledges, rig, pid), 60, "a label acknowledged before the outage")
            self.acknowledged.append(pid)
        assert self.pg is not None
        self.pg.stop()
        self.stopped = True

    def on_prior(self, rig: Rig) -> None:
        # The restored pods started without the store and serve /predict; feedback is refused, never acknowledged.
        for _ in range(5):
            pid = self.predict(rig)
            code, retry_after = self.label(rig, pid)
            assert code == 503 and retry_after, f"feedback with the store down: {code} (Retry-After {retry_after!r})"
            self.during_outage.append(pid)

    def lift(self, rig: Rig) -> None:
        if self.pg is not None and self.stopped:
            self.pg.start()
            self.stopped = False

    def check(self, rig: Rig, status: api.MLModelStatus) -> None:
        url = rig.story.service_url()

        def labelled(pid: str) -> bool:
            code, body, _ = _call(f"{url}/feedback/{pid}")
            return code == 200 and [f["stakeholder"] for f in body.get("feedback", [])] == ["finance"]

        for pid in self.acknowledged:
            wait_for(functools.partial(labelled, pid), 120, f"the label acknowledged before the outage on {pid}")

        # What was answered during the outage waited in its server's buffer: it takes feedback once that server has
        # written it (until then: 503 while that replica reconnects, or 404 from the other replica).
        def accepted(pid: str) -> bool:
            code, _ = self.label(rig, pid)
            assert code in (200, 201, 404, 503), f"feedback on {pid}, answered while the store was down: {code}"
            return code in (200, 201)

        for pid in self.during_outage:
            wait_for(functools.partial(accepted, pid), 120, f"feedback on {pid}, answered during the outage")


class OperatorKilled(Fault):
    """SIGKILL of the operator right after the request; a new process completes the same rollback."""

    name = "operator kill -9 after the request"
    id = "operator-kill-9"
    standby_replicas = 1

    def __init__(self) -> None:
        self.killed = False

    def meanwhile(self, rig: Rig, elapsed: float) -> None:
        if not self.killed:
            self.killed = True
            rig.operators[0].kill()
            rb = rig.story.status().last_rollback
            rig.notes.append(f"killed {elapsed:.2f}s after the request; rollback in status then: "
                             f"{rb.id if rb else 'none'}")
            rig.start_operator()


class LeaderKilled(Fault):
    """Two operator processes with leader election; SIGKILL of the leader right after the request: the other takes
    the Lease (after its duration) and completes the same rollback."""

    name = "leader kill -9 after the request, failover"
    id = "leader-failover"
    standby_replicas = 1

    def __init__(self) -> None:
        self.killed = False

    def start_operators(self, rig: Rig) -> None:
        leases = rig.request.getfixturevalue("leases")
        first = rig.start_operator(LEADER_ELECTION_ENV)
        wait_for(lambda: "campaigning for Lease" in first.log(), 30, "the first operator campaigns")
        wait_for(lambda: lease_holder(leases) == campaign_identity(first), 30, "the first operator leads")
        rig.start_operator(LEADER_ELECTION_ENV)

    def meanwhile(self, rig: Rig, elapsed: float) -> None:
        if not self.killed:
            self.killed = True
            holder = lease_holder(rig.request.getfixturevalue("leases"))
            [leader] = [p for p in rig.operators if campaign_identity(p) == holder]
            leader.kill()
            rig.notes.append(f"leader killed {elapsed:.2f}s after the request")


class APIServerThrottled(Fault):
    """Every request of the operator answered 429 (``Retry-After: 1``, a ``TooManyRequests`` Status) for 30 s from
    just before the request, by a front on loopback between the operator process and the real API server
    (``localenv/apiserver_front.py``): the same user and token, authorized by the API server. The operator's watches
    already streaming keep streaming, as on the API server (a watch is admitted when it starts): it sees the request
    at once and must carry the rollback through 429s on every read and write it makes, retrying."""

    name = "API server 429 to the operator for 30 s"
    id = "api-429-30s"
    standby_replicas = 1
    seconds = 30.0

    def __init__(self) -> None:
        self.front: APIServerFront | None = None

    def start_operators(self, rig: Rig) -> None:
        self.front = APIServerFront.of(rig.cluster)
        rig.request.addfinalizer(self.front.close)
        user = OperatorProcess.user
        rig.start_operator(kubeconfig=self.front.kubeconfig(rig.cluster.kubeconfigs[user],
                                                            rig.tmp_path / f"{user}-via-front.kubeconfig"))

    def before(self, rig: Rig) -> None:
        assert self.front is not None
        self.front.throttle_for(self.seconds)

    def lift(self, rig: Rig) -> None:
        if self.front is not None:
            self.front.throttle_for(0)

    def check(self, rig: Rig, status: api.MLModelStatus) -> None:
        assert self.front is not None
        assert self.front.answered_429 > 0, "the fault was not seen"
        rig.notes.append(f"{self.front.answered_429} requests of the operator answered 429")


class HostileTenants(Fault):
    """Another namespace's ten hostile artifacts (trickling bytes, huge declared sizes, a manifest declaring 1 TiB,
    an endless body, a 64 MiB signed model within and over its limits: ``localenv.hostile_store``) are being
    verified by the same operator process when the on-call rollback is asked for. The rollback takes the artifact
    store's path (no standby), through the verification pool they fill, and completes in its ordinary time; each
    hostile model gets its own condition and nothing of theirs is served."""

    name = "ten hostile artifacts of another namespace"
    id = "hostile-tenants"

    def __init__(self) -> None:
        self.namespace = f"h-{uuid.uuid4().hex[:10]}"
        self.store: HostileStore | None = None
        self.hostile: list[HostileModel] = []

    def start_operators(self, rig: Rig) -> None:
        core = client.CoreV1Api(rig.story.clients["admin"])
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
            name=self.namespace, labels={"pod-security.kubernetes.io/enforce": "restricted"})))
        rig.request.addfinalizer(lambda: core.delete_namespace(self.namespace))
        rig.start_operator({"MODELWARDEN_NAMESPACES": f"{rig.story.namespace},{self.namespace}"})

    def tenant(self, rig: Rig) -> Models:
        return Models(rig.story.clients["admin"], self.namespace)

    def pending(self, rig: Rig) -> list[str]:
        tenant = self.tenant(rig)
        return [m.name for m in self.hostile if _artifact_reason(tenant, m.name) == api.Reason.VERIFICATION_PENDING]

    def before(self, rig: Rig) -> None:
        key, public = write_key(rig.tmp_path)
        big_sha = signed_directory(rig.tmp_path / "hostile" / "big", key, model_bytes=64 << 20)
        trust_artifact_keys(rig.cluster, {"release": public.decode()}, "real-node-fault-table")
        client.CoreV1Api(rig.story.clients["admin"]).create_namespaced_config_map(self.namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="trusted-keys"), data={"release.pub": public.decode()}))
        self.store = HostileStore(rig.tmp_path / "hostile").__enter__()
        self.hostile = ten_hostile_models(self.store.url, big_sha, "trusted-keys")
        tenant = self.tenant(rig)
        for model in self.hostile:
            body = mlmodel(model.name, "v1", "file:///unused", "0" * 64, steps=[{"setWeight": 100, "pauseSeconds": 0}])
            body["spec"]["artifact"] = {"format": "skops", **model.artifact}
            tenant.create(body)
        # The rollback is asked for only once the hostile verifications are running.
        wait_for(lambda: bool(self.pending(rig)), 60, "a hostile verification in flight")

    def on_prior(self, rig: Rig) -> None:
        rig.notes.append(f"{len(self.pending(rig))} of 10 hostile verifications still pending when every answer was "
                         "v1's")

    def lift(self, rig: Rig) -> None:
        if self.store is not None:
            self.store.__exit__(None, None, None)
            self.store = None

    def check(self, rig: Rig, status: api.MLModelStatus) -> None:
        assert status.last_rollback is not None
        assert "TargetVerified" in [t.event for t in status.last_rollback.timeline], "the store's path, verified"
        tenant = self.tenant(rig)
        for model in self.hostile:
            theirs = tenant.status(model.name)
            assert theirs.phase != api.Phase.FAILED, f"{model.name}: nothing proven about its bytes is no mismatch"
            assert theirs.stable is None, f"{model.name}: nothing unverified or unapproved is served"


def _artifact_reason(models: Models, name: str) -> str | None:
    found = next((c for c in models.status(name).conditions if c.type == api.ConditionType.ARTIFACT_VERIFIED), None)
    return found.reason if found is not None else None


FAULTS: list[Fault] = [StoreUnavailable(), PostgresDown(), APIServerThrottled(), OperatorKilled(), LeaderKilled(),
                       StoreDownStandby(), HostileTenants()]
TABLE: list[str] = []


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_rollback_under_fault_through_the_service(
        fault: Fault, modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient],
        real_namespace: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    artifacts = build_artifacts(tmp_path)
    v1, v2 = artifacts["v1"].sha256, artifacts["v2"].sha256
    pager = Pager()
    rig = Rig(modelwarden_installed, request, Story(modelwarden_installed, real_namespace, artifacts),
              ArtifactServer(tmp_path), pager, tmp_path)
    story = rig.story
    with serving(pager.server):
        try:
            fault.start_operators(rig)
            uris = {v: rig.store.uri(a.directory / a.model_file) for v, a in artifacts.items()}
            story.promote_v1_then_v2(uris, fault.standby_replicas, rig.check_alive, fault.feedback_store(rig))
            url = story.service_url()
            # kube-proxy follows the EndpointSlices a moment after the pods: count once every answer is v2's.
            wait_for(lambda: set(story.answers(url, 40)) == {v2}, 120, "every answer on v2's sha256 before the fault")
            assert pager.received == [], pager.received

            fault.before(rig)
            to_prior = story.roll_back(lambda elapsed: fault.meanwhile(rig, elapsed), timeout=240)
            asked = time.monotonic() - to_prior
            answers = story.answers(url, 100)
            assert set(answers) == {v1}, f"answers after the rollback: {sorted(set(answers))}"
            fault.on_prior(rig)
            fault.lift(rig)

            def done() -> bool:
                rig.check_alive()
                return story.status().phase == api.Phase.HALTED

            wait_for(done, 120, "the rollback ends Halted")
            to_done = time.monotonic() - asked
            status = story.status()
            fault.check(rig, status)

            assert status.stable is not None and status.stable.sha256 == v1
            assert set(story.answers(url, 100)) == {v1}, "every answer carries the prior SHA256"
            # The passes after the rollback keep the traffic there (the Service once went back to the stable
            # Deployment while its one ready pod was still v2's): two resyncs later every answer is still v1's.
            time.sleep(2 * RESYNC_SECONDS + 1)
            assert set(story.answers(url, 100)) == {v1}, "every answer stays on the prior SHA256"
            rb = status.last_rollback
            assert rb is not None and rb.to_sha256 == v1
            assert [i.id for i in status.incidents] == [rb.id], status.incidents
            assert "TargetRejected" not in [t.event for t in rb.timeline], rb.timeline
            reasons = [e.reason for e in Models(api_clients["admin"], real_namespace).events(MODEL)]
            assert api.Reason.TARGET_SHA256_MISMATCH not in reasons, "the target is never rejected"
            code, result = verify(modelwarden_installed, real_namespace, MODEL)
            assert code == 0, result
            decisions = ledger_decisions(api_clients["admin"], real_namespace)
            assert decisions.count(api.Reason.ROLLBACK_STARTED) == 1, decisions
            assert decisions.count(api.Reason.ROLLBACK_COMPLETE) == 1, decisions
            # Pages arrive a moment after the status says so (best effort, retried): give them that moment.
            wait_for(lambda: pager.pages >= 1, 30, "the page")
            assert pager.pages == 1, pager.received
            paged = {(n.get("rollback") or {}).get("id") for n in pager.received if n.get("severity") == "page"}
            assert paged == {rb.id}, pager.received
        except BaseException:
            print(rig.logs())
            raise
        finally:
            fault.lift(rig)
            for proc in rig.operators:
                proc.stop()
            rig.store.close()

    TABLE.append(f"{fault.name:<44} {to_prior:>16.1f} {to_done:>9.1f} {len(status.incidents):>9} {pager.pages:>5}"
                 + (f"   ({'; '.join(rig.notes)})" if rig.notes else ""))
    print("\n" + f"{'fault':<44} {'s to every v1 ans':>16} {'s to done':>9} {'incidents':>9} {'pages':>5}\n"
          + "\n".join(TABLE))
