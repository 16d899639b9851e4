"""Where the feedback store thread runs: at nice 5 by default, in the idle class only with ``STORE_THREAD_IDLE``
(the operator sets it in its pods, whose CPU cgroup holds the server alone). The idle class's behaviour on a
busy core is tested in ``tests/integration/test_server_store_priority.py``."""

from __future__ import annotations

import asyncio
import os

from model_server.config import Settings
from model_server.feedback import StoreThread
from model_server.priority import BACKGROUND_NICE
from modelwarden.adapters import manifests
from modelwarden.api import v1alpha1 as api


def policy_and_nice(idle_class: bool) -> tuple[int, int]:
    async def main() -> tuple[int, int]:
        store = StoreThread(lambda dsn: None, idle_class=idle_class)  # type: ignore[arg-type,return-value]
        try:
            return await store.run(lambda: (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)))
        finally:
            await store.close()

    return asyncio.run(main())


def test_by_default_the_store_thread_runs_at_nice_5_where_no_other_process_can_starve_it() -> None:
    assert policy_and_nice(idle_class=False) == (os.SCHED_OTHER, BACKGROUND_NICE)


def test_with_store_thread_idle_it_runs_in_the_idle_class() -> None:
    assert policy_and_nice(idle_class=True)[0] == os.SCHED_IDLE


def test_the_operators_pods_set_store_thread_idle_and_the_server_reads_it() -> None:
    spec = api.MLModelSpec.model_validate({
        "version": "v1", "artifact": {"uri": "https://example.invalid/m/model.skops", "sha256": "a" * 64},
        "featureContract": {"name": "c", "features": ["f"], "nFeatures": 1}})
    artifact = api.ArtifactVersion(version="v1", uri="https://example.invalid/m/model.skops", sha256="a" * 64)
    body = manifests.deployment_manifest(manifests.ModelObject(name="m", namespace="ns", uid="u-1"), spec, "stable",
                                         artifact, 1, "fp")
    env = {e["name"]: e.get("value") for e in body["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STORE_THREAD_IDLE"] == "true"
    settings = Settings.from_env({**{k: v for k, v in env.items() if v is not None}, "ARTIFACT_SHA256": "a" * 64})
    assert settings.store_thread_idle
    assert not Settings.from_env({**{k: v for k, v in env.items() if v is not None and k != "STORE_THREAD_IDLE"},
                                  "ARTIFACT_SHA256": "a" * 64}).store_thread_idle
