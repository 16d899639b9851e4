"""KubeLedger's checkpoint (issue 27) against an in-memory API (namespaced segments, cluster-scoped checkpoints):
one checkpoint write per append, a stored tail that does not end at the checkpoint is never appended to, a model
without a checkpoint adopts its chain and says so, a retired key signs nothing. The real API server: the
integration test tests/integration/test_ledger_checkpoint.py."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from modelwarden.adapters.kube import KubeError
from modelwarden.adapters.ledger import CHECKPOINT_ADOPTED, KubeLedger, LedgerBroken
from modelwarden.adapters.manifests import ModelObject
from modelwarden.api import v1alpha1 as api
from modelwarden.artifacts.ledger_keys import LedgerSigner
from modelwarden.engine.ledger import Entry, TrustedKey

T0 = dt.datetime(2027, 1, 4, 9, 0, tzinfo=dt.UTC)
MODEL = ModelObject(namespace="ns", name="credit", uid="0123456789abcdef")


class FakeCustom:
    def __init__(self) -> None:
        self.segments: dict[str, dict[str, Any]] = {}
        self.checkpoints: dict[str, dict[str, Any]] = {}
        self.version = 0

    def _stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.version)
        return body

    def list_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                      label_selector: str = "") -> dict[str, Any]:
        return {"items": [copy.deepcopy(o) for o in self.segments.values()]}

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: dict[str, Any]) -> dict[str, Any]:
        if body["metadata"]["name"] in self.segments:
            raise KubeError("exists", 409)
        self.segments[body["metadata"]["name"]] = self._stamp(body)
        return self.segments[body["metadata"]["name"]]

    def replace_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                         body: dict[str, Any]) -> dict[str, Any]:
        return self._replace(self.segments, name, body)

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        name: str) -> None:
        del self.segments[name]

    def get_cluster_custom_object(self, group: str, version: str, plural: str, name: str) -> dict[str, Any]:
        if plural != api.CHECKPOINT_PLURAL or name not in self.checkpoints:
            raise KubeError("not found", 404)
        return copy.deepcopy(self.checkpoints[name])

    def create_cluster_custom_object(self, group: str, version: str, plural: str,
                                     body: dict[str, Any]) -> dict[str, Any]:
        self.checkpoints[body["metadata"]["name"]] = self._stamp(body)
        return self.checkpoints[body["metadata"]["name"]]

    def replace_cluster_custom_object(self, group: str, version: str, plural: str, name: str,
                                      body: dict[str, Any]) -> dict[str, Any]:
        return self._replace(self.checkpoints, name, body)

    def _replace(self, store: dict[str, dict[str, Any]], name: str, body: dict[str, Any]) -> dict[str, Any]:
        if name not in store:
            raise KubeError("not found", 404)
        if store[name]["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
            raise KubeError("conflict", 409)
        store[name] = self._stamp(body)
        return store[name]


class FakeKube:
    def __init__(self) -> None:
        self.custom = FakeCustom()

    async def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


def ledger(kube: FakeKube, own_key: TrustedKey | None = None, signer: LedgerSigner | None = None) -> KubeLedger:
    return KubeLedger(kube, signer or LedgerSigner.generate(), key_namespace="modelwarden-system",  # type: ignore[arg-type]
                      own_key=own_key)


def append(writer: KubeLedger, *keys: str) -> api.LedgerHead | None:
    return asyncio.run(writer.append(MODEL, [Entry(decision="StepAdvanced", key=k) for k in keys], generation=1,
                                     now=T0))


def test_every_append_moves_the_checkpoint_once() -> None:
    kube = FakeKube()
    writer = ledger(kube)
    append(writer, "a", "b")
    head = append(writer, "c")
    assert head is not None and head.seq == 2
    spec = kube.custom.checkpoints[MODEL.uid]["spec"]
    assert (spec["seq"], spec["hash"], spec["namespace"], spec["model"]) == (2, head.hash, "ns", "credit")
    assert (writer.writes, writer.checkpoint_writes) == (2, 2)


def test_a_deleted_tail_is_never_appended_to_nor_rechained() -> None:
    kube = FakeKube()
    writer = ledger(kube)
    append(writer, "a", "b", "c")
    segment = next(iter(kube.custom.segments.values()))
    segment["spec"]["records"] = segment["spec"]["records"][:1]
    segment["metadata"]["resourceVersion"] = "changed"
    with pytest.raises(LedgerBroken) as broken:
        append(writer, "d")
    assert broken.value.reason == api.Reason.LEDGER_TAIL_MISSING and "records 1-2 were deleted" in broken.value.message
    assert len(segment["spec"]["records"]) == 1 and kube.custom.checkpoints[MODEL.uid]["spec"]["seq"] == 2
    # a new process (no cache) refuses the same way; the whole ledger deleted too
    kube.custom.segments.clear()
    with pytest.raises(LedgerBroken, match="the whole ledger was deleted"):
        append(ledger(kube), "e")
    assert kube.custom.segments == {}


def test_a_chain_without_checkpoint_is_adopted_and_says_so() -> None:
    kube = FakeKube()
    signer = LedgerSigner.generate()
    append(ledger(kube, signer=signer), "a")
    kube.custom.checkpoints.clear()  # an upgrade, or a cluster-admin accepting the chain as stored
    writer = ledger(kube, signer=signer)
    append(writer, "b")
    records = next(iter(kube.custom.segments.values()))["spec"]["records"]
    assert [r["decision"] for r in records] == ["StepAdvanced", CHECKPOINT_ADOPTED, "StepAdvanced"]
    assert kube.custom.checkpoints[MODEL.uid]["spec"]["seq"] == 2


def test_a_retired_key_signs_nothing() -> None:
    kube = FakeKube()
    signer = LedgerSigner.generate()
    retired = TrustedKey(signer.key_id, "2020-01-01T00:00:00Z", "2026-12-31T00:00:00Z")
    with pytest.raises(LedgerBroken) as broken:
        append(ledger(kube, retired, signer), "a")
    assert broken.value.reason == api.Reason.LEDGER_KEY_RETIRED and kube.custom.segments == {}
