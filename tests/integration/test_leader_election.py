"""Two real operator processes with leader election, on the real control plane, as the least-privilege
``modelwarden-operator`` user (the shipped ClusterRole plus the shipped leader-election Role in modelwarden-system):

- exactly one holds the Lease and acts (the other watches, keeps its cache warm, and reconciles nothing);
- kill -9 of the leader: the other takes over within the lease duration + a few seconds, and a model created right
  after the crash gets its Deployment;
- a clean stop releases the Lease: the next candidate takes over within about one retry period;
- a leader that sees another holder on the Lease stops acting at once (the process exits).

The measured times are printed (``pytest -s``) and bounded by assertions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client

from localenv.cluster import Cluster
from localenv.modelwarden import OperatorProcess
from modelwarden.api.v1alpha1 import Phase
from tests.integration.modelwarden_helpers import (
    LEADER_ELECTION_ENV,
    LEASE_NAME,
    LEASE_NAMESPACE,
    Models,
    approval,
    artifact,
    campaign_identity,
    lease_holder,
    mlmodel,
)

LEASE_DURATION, RETRY_PERIOD = 15.0, 2.0
ENV = {**LEADER_ELECTION_ENV, "MODELWARDEN_RESYNC_SECONDS": "10"}

pytestmark = pytest.mark.timeout(600)


def _wait(predicate: Callable[[], object], timeout: float, what: str, check: Callable[[], None] | None = None,
          ) -> float:
    began = time.monotonic()
    while not predicate():
        if check is not None:
            check()
        if time.monotonic() - began > timeout:
            pytest.fail(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.1)
    return time.monotonic() - began


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_start} not in /metrics:\n{text}")


def test_one_leader_acts_and_fails_over(modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient],
                                        namespace: str, leases: client.CoordinationV1Api, tmp_path: Path) -> None:
    cluster = modelwarden_installed
    procs: list[OperatorProcess] = []

    def operator(name: str) -> OperatorProcess:
        proc = OperatorProcess(cluster, tmp_path / f"operator-{name}.log", env=dict(ENV)).start()
        procs.append(proc)
        return proc

    def holder() -> str:
        return lease_holder(leases)

    admin = Models(api_clients["admin"], namespace)
    finance = Models(api_clients["finance-approver"], namespace)
    regulatory = Models(api_clients["regulatory-approver"], namespace)

    def approved_model(name: str) -> None:
        uri, sha = artifact(tmp_path, name)
        admin.create(mlmodel(name, "v1", uri, sha, replicas=1))
        finance.approve(approval(name, "v1", sha, "finance", "finance-approver"))
        regulatory.approve(approval(name, "v1", sha, "regulatory", "regulatory-approver"))

    try:
        a = operator("a")
        id_a = campaign_identity(a)
        _wait(lambda: holder() == id_a, 10, "the first operator takes the free Lease")
        b = operator("b")
        id_b = campaign_identity(b)
        assert id_a != id_b

        # Exactly one acts: a takes m1 to Stable; b only watches (warm cache, no reconcile, not leader).
        approved_model("m1")
        def both_alive() -> None:
            a.check_alive()
            b.check_alive()

        admin.wait_phase("m1", Phase.STABLE, timeout=90, check=both_alive)
        time.sleep(RETRY_PERIOD * 2)  # a few renewals
        assert holder() == id_a
        ma, mb = a.metrics(), b.metrics()
        assert _metric(ma, "modelwarden_leader") == 1 and _metric(mb, "modelwarden_leader") == 0
        assert _metric(ma, 'modelwarden_reconcile_total{result="success"}') > 0
        assert _metric(mb, 'modelwarden_reconcile_total{result="success"}') == 0
        assert _metric(mb, "modelwarden_models") >= 1  # b's cache is warm
        assert "became the leader" in a.log() and "became the leader" not in b.log()

        # kill -9 the leader: b takes over within the lease duration + a retry period, and acts.
        crashed = time.monotonic()
        a.kill()
        approved_model("m2")
        took_over = _wait(lambda: holder() == id_b, LEASE_DURATION + 3 * RETRY_PERIOD + 5, "b takes over",
                          check=b.check_alive)
        served = _wait(lambda: admin.deployment("m2-stable") is not None, 60, "m2's Deployment after failover",
                       check=b.check_alive) + took_over
        admin.wait_phase("m2", Phase.STABLE, timeout=90, check=b.check_alive)
        print(f"\nfailover after kill -9: Lease taken over after {took_over:.1f}s, "
              f"new model's Deployment created after {served:.1f}s")
        assert LEASE_DURATION - 2 * RETRY_PERIOD <= took_over <= LEASE_DURATION + 3 * RETRY_PERIOD + 3, took_over
        assert _metric(b.metrics(), "modelwarden_leader") == 1
        assert time.monotonic() - crashed < LEASE_DURATION + 30

        # A clean stop releases the Lease: c (a candidate that has been watching) takes over at once.
        c = operator("c")
        id_c = campaign_identity(c)
        time.sleep(RETRY_PERIOD * 1.5)  # c has read the Lease at least once
        stopping = time.monotonic()
        b.stop()
        released_after = time.monotonic() - stopping
        handover = _wait(lambda: holder() == id_c, 3 * RETRY_PERIOD + 2, "c takes over a released Lease",
                         check=c.check_alive) + released_after
        print(f"handover after a clean stop (SIGTERM): {handover:.1f}s (the stop itself took {released_after:.1f}s)")
        assert "released Lease" in b.log()
        assert handover <= 3 * RETRY_PERIOD + 2 + released_after

        # Someone else takes the Lease: the leader stops acting at once (exits; its Deployment would restart it).
        lease = leases.read_namespaced_lease(LEASE_NAME, LEASE_NAMESPACE)
        lease.spec.holder_identity = "intruder"
        lease.spec.lease_duration_seconds = 3600
        leases.replace_namespaced_lease(LEASE_NAME, LEASE_NAMESPACE, lease)
        usurped = time.monotonic()
        assert c.process is not None
        exited = _wait(lambda: c.process is not None and c.process.poll() is not None, 3 * RETRY_PERIOD + 2,
                       "the usurped leader exits")
        print(f"a leader that lost its Lease exited after {exited:.1f}s (exit code {c.process.returncode})")
        assert c.process.returncode != 0 and "lost leadership" in c.log() and "held by intruder" in c.log()
        assert time.monotonic() - usurped < 10
        c.process = None
    finally:
        for proc in procs:
            proc.stop()
