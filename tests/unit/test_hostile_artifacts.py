"""Another tenant's artifacts cannot stall the operator (issue 24, item 5): a local hostile store on loopback
(trickling bytes, a huge declared size, a manifest declaring a huge file, an endless report, a big signed model)
against the real URIArtifactStore and the verification pool; the cluster is the in-memory fake of
test_reconcile (this layer's unit tests), the HTTP is real."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from localenv.hostile_store import HostileStore, signed_directory, small_model_sha256, write_key
from modelwarden.adapters.artifact_store import REPORT_LIMIT, ArtifactTooLarge, ByteLimits, URIArtifactStore
from modelwarden.api import v1alpha1 as api
from modelwarden.artifacts import SIGNATURE_FILENAME
from modelwarden.engine.conditions import get_condition
from modelwarden.engine.decision import ArtifactCheck, Observation
from modelwarden.engine.rollout import decide
from modelwarden.handlers.controller import Controller
from modelwarden.handlers.verification import VerificationPool
from tests.unit.engine_world import SHA, T0, World, honest_world, make_spec
from tests.unit.test_engine_rollback import STEPS, promoted_v2
from tests.unit.test_reconcile import FakeCluster, FakeRouter

MiB = 1 << 20
# What a verification may hold in memory, whatever the artifact's size: a few transfer chunks and one report.
MEMORY_BOUND = 16 * MiB


def peak_memory(run: Callable[[], Coroutine[Any, Any, Any]]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = asyncio.run(run())
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_endless_report_is_refused_past_its_limit_with_bounded_memory() -> None:
    with HostileStore() as store:
        async def read() -> object:
            return await URIArtifactStore().read_json(f"{store.url}/endless/bias-report.json")

        tracemalloc.start()
        try:
            with pytest.raises(ArtifactTooLarge, match="more than the limit"):
                asyncio.run(read())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"reading an endless report held {peak / MiB:.1f} MiB"
    assert store.sent["endless"] < 16 * REPORT_LIMIT, "the reader stopped at its limit, not at the stream's end"


def test_a_huge_declared_size_is_refused_before_the_body_is_read() -> None:
    with HostileStore() as store, pytest.raises(ArtifactTooLarge, match="Content-Length 1125899906842624"):
        asyncio.run(URIArtifactStore().sha256(f"{store.url}/declared/model.skops", ByteLimits()))
    assert store.sent["declared"] < 64 * MiB


def test_a_big_signed_model_is_verified_streaming_with_bounded_memory_and_no_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, public = write_key(tmp_path)
    sha = signed_directory(tmp_path / "store" / "big", key, model_bytes=96 * MiB)
    scratch = tmp_path / "operator-tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the operator's /tmp use would go
    disk: list[int] = []

    def sample(path: str, sent: int) -> None:
        if path == "big/model.skops" and sent % (16 * MiB) == 0:
            disk.append(sum(f.stat().st_size for f in scratch.rglob("*") if f.is_file()))

    with HostileStore(tmp_path / "store", on_honest=sample) as store:
        uri = f"{store.url}/honest/big/model.skops"
        artifacts = URIArtifactStore()

        async def verify() -> tuple[str, object]:
            return (await artifacts.sha256(uri, ByteLimits()),
                    await artifacts.verify_signature(uri, [public], ByteLimits()))

        (actual, verdict), peak = peak_memory(verify)
    assert actual == sha
    assert getattr(verdict, "ok", False), verdict
    assert peak < MEMORY_BOUND, f"verifying a 96 MiB signed model held {peak / MiB:.1f} MiB"
    assert disk and max(disk) <= REPORT_LIMIT, f"disk used while the model streamed: {disk}"
    assert not list(scratch.iterdir()), "nothing is left behind"


def test_a_streamed_directory_that_changed_or_lost_its_signature_is_still_refused(tmp_path: Path) -> None:
    key, public = write_key(tmp_path)
    signed_directory(tmp_path / "store" / "changed", key, model_bytes=MiB)
    (tmp_path / "store" / "changed" / "bias-report.json").write_text('{"status": "fail"}')
    signed_directory(tmp_path / "store" / "unsigned", key, model_bytes=MiB)
    (tmp_path / "store" / "unsigned" / SIGNATURE_FILENAME).unlink()
    with HostileStore(tmp_path / "store") as store:
        artifacts = URIArtifactStore()
        changed = asyncio.run(artifacts.verify_signature(f"{store.url}/honest/changed/model.skops", [public],
                                                         ByteLimits()))
        unsigned = asyncio.run(artifacts.verify_signature(f"{store.url}/honest/unsigned/model.skops", [public],
                                                          ByteLimits()))
    assert (changed.ok, changed.reason) == (False, "ContentChanged") and "bias-report.json changed" in changed.message
    assert (unsigned.ok, unsigned.reason) == (False, "SignatureMissing")


def test_a_manifest_declaring_a_huge_file_is_refused_before_any_file_is_read(tmp_path: Path) -> None:
    _, public = write_key(tmp_path)
    with HostileStore() as store, pytest.raises(ArtifactTooLarge, match=r"weights\.bin of 1099511627776 bytes"):
        asyncio.run(URIArtifactStore().verify_signature(f"{store.url}/manifest-huge/model.skops", [public],
                                                        ByteLimits()))
    assert "/manifest-huge/weights.bin" not in store.requested


# --- the pool: fairness across namespaces ---


def test_the_pool_serves_namespaces_round_robin_one_at_a_time_each_within_its_cap() -> None:
    async def scenario() -> tuple[list[tuple[str, str]], int, dict[str, int]]:
        started: list[tuple[str, str]] = []
        running: dict[str, int] = {}
        most = 0
        most_per_ns: dict[str, int] = {}
        release = asyncio.Event()
        woken: list[tuple[str, str]] = []
        pool = VerificationPool(wake=woken.append, capacity=2, grace_seconds=0)

        def job(ns: str, name: str) -> Callable[[], Awaitable[ArtifactCheck]]:
            async def run() -> ArtifactCheck:
                nonlocal most
                started.append((ns, name))
                running[ns] = running.get(ns, 0) + 1
                most = max(most, sum(running.values()))
                most_per_ns[ns] = max(most_per_ns.get(ns, 0), running[ns])
                if ns == "hostile":
                    await release.wait()
                running[ns] -= 1
                return ArtifactCheck(uri=name, actual="0" * 64)
            return run

        keys = [("hostile", f"h{i}") for i in range(5)] + [("calm", "c0"), ("other", "o0")]
        for ns, name in keys:
            assert await pool.verdict((ns, name), name, job(ns, name), uri=name, deadline_seconds=60) is None
        for _ in range(50):
            await asyncio.sleep(0)
        before_release = list(started)
        release.set()
        for _ in range(200):
            await asyncio.sleep(0)
            if len(woken) == len(keys):
                break
        verdicts = [await pool.verdict(k, k[1], job(*k), uri=k[1], deadline_seconds=60) for k in keys]
        assert all(v is not None and v.actual == "0" * 64 for v in verdicts)
        return before_release, most, most_per_ns

    before_release, most, most_per_ns = asyncio.run(scenario())
    # While one hostile verification hangs, the other namespaces are served; the hostile queue waits its turn.
    assert ("calm", "c0") in before_release and ("other", "o0") in before_release
    assert [k for k in before_release if k[0] == "hostile"] == [("hostile", "h0")]
    assert most <= 2 and most_per_ns["hostile"] == 1


def test_a_verification_past_its_deadline_is_timed_out_and_frees_its_slot() -> None:
    async def scenario() -> ArtifactCheck | None:
        woken: list[tuple[str, str]] = []
        pool = VerificationPool(wake=woken.append, capacity=1, grace_seconds=0)

        async def hang() -> ArtifactCheck:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        await pool.verdict(("ns", "m"), "a", hang, uri="u", deadline_seconds=0.05)
        while not woken:
            await asyncio.sleep(0.01)
        assert pool.in_flight() == 0
        return await pool.verdict(("ns", "m"), "a", hang, uri="u", deadline_seconds=0.05)

    verdict = asyncio.run(scenario())
    assert verdict is not None and verdict.failure == api.Reason.VERIFICATION_TIMED_OUT and verdict.actual is None


# --- the controller: hostile models get their condition, a model elsewhere goes on ---


@dataclass
class KeyedCluster(FakeCluster):
    trusted: dict[tuple[str, str], list[bytes]] = field(default_factory=dict)

    async def read_trusted_keys(self, namespace: str, config_map: str) -> list[bytes]:
        return self.trusted.get((namespace, config_map), [])


def model_body(namespace: str, name: str, uri: str, sha256: str, **artifact: Any) -> dict[str, Any]:
    spec = {"version": "v1", "artifact": {"uri": uri, "sha256": sha256, **artifact},
            "featureContract": {"name": "fc", "features": ["a", "b"], "nFeatures": 2},
            "serving": {"replicas": 1}, "rollout": {"steps": [{"setWeight": 100, "pauseSeconds": 0}]}}
    return {"metadata": {"namespace": namespace, "name": name, "uid": f"{namespace}-{name}", "generation": 1,
                         "resourceVersion": "1"},
            "spec": api.MLModelSpec.model_validate(spec).wire()}


def verified_reason(controller: Controller, key: tuple[str, str]) -> str | None:
    status = api.MLModelStatus.model_validate(controller.models[key].get("status") or {})
    condition = get_condition(status.conditions, api.ConditionType.ARTIFACT_VERIFIED)
    return condition.reason if condition is not None else None


def test_hostile_models_get_their_condition_while_a_model_in_another_namespace_is_verified(tmp_path: Path) -> None:
    (tmp_path / "store" / "calm").mkdir(parents=True)
    (tmp_path / "store" / "calm" / "model.skops").write_bytes(b"calm model\n")
    calm_sha = hashlib.sha256(b"calm model\n").hexdigest()
    _, public = write_key(tmp_path)
    cluster = KeyedCluster(trusted={("tenant-b", "keys"): [public]})
    with HostileStore(tmp_path / "store", trickle_interval=0.05) as store:
        hostile: dict[str, dict[str, Any]] = {
            **{f"trickle-{i}": dict(uri=f"{store.url}/trickle/model.skops", sha256="1" * 64,
                                    limits={"verifyTimeoutSeconds": 1}) for i in range(4)},
            "declared": dict(uri=f"{store.url}/declared/model.skops", sha256="2" * 64),
            "endless": dict(uri=f"{store.url}/endless/model.skops", sha256="3" * 64,
                            limits={"maxFileBytes": MiB}),
            "manifest-huge": dict(uri=f"{store.url}/manifest-huge/model.skops", sha256=small_model_sha256(),
                                  signature={"configMapName": "keys"}),
        }
        expected = {**{f"trickle-{i}": api.Reason.VERIFICATION_TIMED_OUT for i in range(4)},
                    "declared": api.Reason.ARTIFACT_TOO_LARGE, "endless": api.Reason.ARTIFACT_TOO_LARGE,
                    "manifest-huge": api.Reason.ARTIFACT_TOO_LARGE}
        calm_key = ("team", "calm")

        async def scenario() -> tuple[dict[str, str | None], dict[str, str | None]]:
            controller = Controller(workloads=cluster, status_writer=cluster, events=cluster,
                                    artifacts=URIArtifactStore(), reports=URIArtifactStore(),
                                    router_for=lambda spec: FakeRouter(), clock=lambda: T0)
            for name, artifact in hostile.items():
                controller.caches.observe_model("ADDED", model_body("tenant-b", name, **artifact))
            controller.caches.observe_model("ADDED", model_body("team", "calm", f"{store.url}/honest/calm/model.skops",
                                                                calm_sha))
            controller.start()
            try:
                while verified_reason(controller, calm_key) != api.Reason.SHA256_MATCH:
                    await asyncio.sleep(0.02)
                when_calm = {n: verified_reason(controller, ("tenant-b", n)) for n in hostile}
                for _ in range(3000):
                    final = {n: verified_reason(controller, ("tenant-b", n)) for n in hostile}
                    if final == expected:
                        break
                    await asyncio.sleep(0.02)
                return when_calm, final
            finally:
                await controller.stop()

        when_calm, final = asyncio.run(scenario())
    assert final == expected
    # The calm model was verified while the hostile namespace still had verifications waiting or running.
    assert api.Reason.VERIFICATION_PENDING in when_calm.values(), when_calm
    assert "/manifest-huge/weights.bin" not in store.requested


def test_a_pending_verification_is_not_a_mismatch_and_a_failure_stands_while_it_is_checked_again() -> None:
    spec = make_spec("v1")
    pending = decide(spec, api.MLModelStatus(), _observation(ArtifactCheck(uri=spec.artifact.uri, pending=True)), T0)
    condition = get_condition(pending.status.conditions, api.ConditionType.ARTIFACT_VERIFIED)
    assert pending.status.phase == api.Phase.PROGRESSING
    assert condition is not None and (condition.status, condition.reason) == ("Unknown", "VerificationPending")
    too_large = decide(spec, api.MLModelStatus(), _observation(ArtifactCheck(
        uri=spec.artifact.uri, error="over the limit", failure=api.Reason.ARTIFACT_TOO_LARGE)), T0)
    condition = get_condition(too_large.status.conditions, api.ConditionType.ARTIFACT_VERIFIED)
    assert too_large.status.phase == api.Phase.PROGRESSING, "too large is not a sha256 mismatch"
    assert condition is not None and (condition.status, condition.reason) == ("False", "ArtifactTooLarge")
    again = decide(spec, too_large.status, _observation(ArtifactCheck(uri=spec.artifact.uri, pending=True)), T0)
    assert again.status.wire() == too_large.status.wire(), "checking again writes nothing"


def _observation(check: ArtifactCheck) -> Observation:
    return Observation(generation=1, artifact=check)



@dataclass
class SlowStoreWorld(World):
    """The engine's world whose artifact verification has not answered yet while ``pending``."""

    pending: bool = False

    def observe(self, spec: api.MLModelSpec, status: api.MLModelStatus) -> Observation:
        observation = super().observe(spec, status)
        if self.pending and observation.artifact is not None:
            return replace(observation, artifact=ArtifactCheck(uri=observation.artifact.uri, pending=True))
        return observation


def test_a_rollback_waits_for_its_pending_target_verification_then_completes() -> None:
    world = SlowStoreWorld(real_sha=honest_world("v1", "v2").real_sha)
    status, now = promoted_v2(world)
    spec = make_spec("v2", rollout=STEPS, rollback={"standby": {"replicas": 0}})  # the store's path
    world.pending, world.rollback = True, "req1"
    events = []
    for _ in range(3):
        world.pods_ready()
        decision = world.step(spec, status, now)
        status, events = decision.status, [*events, *decision.events]
    assert status.phase == api.Phase.ROLLING_BACK
    assert status.stable is not None and status.stable.version == "v2", "nothing moves before the target is verified"
    condition = get_condition(status.conditions, api.ConditionType.ARTIFACT_VERIFIED)
    assert condition is not None and (condition.status, condition.reason) == ("Unknown", "VerificationPending")
    assert api.Reason.TARGET_SHA256_MISMATCH not in [e.reason for e in events], "pending is not a mismatch"
    world.pending = False
    for _ in range(3):
        world.pods_ready()
        status = world.step(spec, status, now).status
    assert status.stable is not None and status.stable.sha256 == SHA["v1"]
    assert status.last_rollback is not None and status.last_rollback.traffic_restored_at is not None
    condition = get_condition(status.conditions, api.ConditionType.ARTIFACT_VERIFIED)
    assert condition is not None and (condition.status, condition.reason) == ("True", "Sha256Match")


def test_a_mismatch_stands_while_the_artifact_is_checked_again() -> None:
    spec = make_spec("v1")
    mismatch = decide(spec, api.MLModelStatus(), _observation(ArtifactCheck(uri=spec.artifact.uri, actual="f" * 64)),
                      T0)
    assert mismatch.status.phase == api.Phase.FAILED
    again = decide(spec, mismatch.status, _observation(ArtifactCheck(uri=spec.artifact.uri, pending=True)), T0)
    assert again.status.wire() == mismatch.status.wire(), "still Failed, nothing written while it is checked again"
