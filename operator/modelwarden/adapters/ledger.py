"""The decision ledger in the cluster (issue 18): ``ModelLedger`` segments in the model's namespace.

A segment holds up to :data:`~modelwarden.engine.ledger.SEGMENT_RECORDS` records; appending replaces the open
(last) segment with its records plus the new ones, guarded by resourceVersion, or creates the next segment.
Records already written are never changed. Segments are labelled with the model's name and uid and carry **no
owner reference**: deleting the MLModel leaves its ledger; segments whose newest record is older than the
retention (``MODELWARDEN_LEDGER_RETENTION_DAYS``, default 400 days, above the EU AI Act's six months) are deleted,
oldest first, never the open one.

A write that fails is retried (:data:`ATTEMPTS`, with backoff), then raised: the pass fails and is retried, so a
record is never skipped. The same decision retried is recorded once (records carry an idempotency ``key``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelwarden.adapters.kube import Conflict, KubeClient, KubeError
from modelwarden.adapters.manifests import ModelObject
from modelwarden.api import v1alpha1 as api
from modelwarden.artifacts.ledger_keys import PUBLIC_KEYS_CONFIGMAP, LedgerSigner
from modelwarden.engine.ledger import SEGMENT_RECORDS, Entry, chain, head_of

__all__ = ["KubeLedger", "LedgerSigner", "LedgerWriter", "segment_name"]

log = logging.getLogger("modelwarden.ledger")

LABEL_MODEL_UID = f"{api.GROUP}/model-uid"
ATTEMPTS = 5
RETRY_BASE_SECONDS = 0.2
DEFAULT_RETENTION_DAYS = 400
# how many recent keys are remembered per model, to record a retried decision once
RECENT_KEYS = 2 * SEGMENT_RECORDS


def segment_name(model: ModelObject, segment: int) -> str:
    return f"{model.name}-{model.uid[:8]}-{segment:06d}"


class LedgerWriter(Protocol):
    async def append(self, model: ModelObject, entries: Sequence[Entry], *, generation: int,
                     now: dt.datetime) -> api.LedgerHead | None: ...


@dataclass
class _Tail:
    segment: int
    resource_version: str | None  # None: the segment does not exist yet
    records: list[api.LedgerRecord]
    last: api.LedgerRecord | None
    keys: list[str] = field(default_factory=list)


class KubeLedger:
    def __init__(self, kube: KubeClient, signer: LedgerSigner, *, key_namespace: str,
                 retention_days: int = DEFAULT_RETENTION_DAYS) -> None:
        self._kube, self._signer, self._key_namespace = kube, signer, key_namespace
        self._retention = dt.timedelta(days=retention_days)
        self._tails: dict[str, _Tail] = {}
        self.writes = 0  # API writes made
        self.records = 0  # records appended (writes / records: what a decision costs)

    async def publish_key(self) -> None:
        """Add this operator's public key to the ConfigMap verifiers read (key id -> PEM; old keys stay)."""
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": PUBLIC_KEYS_CONFIGMAP, "namespace": self._key_namespace,
                             "labels": {api.LABEL_MANAGED_BY: "modelwarden"}},
                "data": {self._signer.key_id: self._signer.public_pem()}}
        try:
            await self._kube.call("publish the ledger's public key", self._kube.core.patch_namespaced_config_map,
                                  PUBLIC_KEYS_CONFIGMAP, self._key_namespace, {"data": body["data"]})
        except KubeError as e:
            if e.status != 404:
                raise
            await self._kube.call("publish the ledger's public key", self._kube.core.create_namespaced_config_map,
                                  self._key_namespace, body)

    async def _load_tail(self, model: ModelObject) -> _Tail:
        listed = await self._kube.call(
            f"list the ledger of {model.namespace}/{model.name}", self._kube.custom.list_namespaced_custom_object,
            api.GROUP, api.VERSION, model.namespace, api.LEDGER_PLURAL, label_selector=f"{LABEL_MODEL_UID}={model.uid}")
        items = sorted(listed.get("items", []), key=lambda o: int((o.get("spec") or {}).get("segment", 0)))
        if not items:
            return _Tail(segment=0, resource_version=None, records=[], last=None)
        keys: list[str] = []
        for obj in items[-2:]:
            keys += [r.get("key", "") for r in (obj.get("spec") or {}).get("records", [])]
        newest = items[-1]
        records = [api.LedgerRecord.model_validate(r) for r in newest["spec"].get("records", [])]
        last = records[-1] if records else None
        if last is None and len(items) > 1:
            prev = items[-2]["spec"].get("records", [])
            last = api.LedgerRecord.model_validate(prev[-1]) if prev else None
        return _Tail(segment=int(newest["spec"]["segment"]), resource_version=newest["metadata"]["resourceVersion"],
                     records=records, last=last, keys=keys[-RECENT_KEYS:])

    async def append(self, model: ModelObject, entries: Sequence[Entry], *, generation: int,
                     now: dt.datetime) -> api.LedgerHead | None:
        """Chain, sign and write ``entries`` (those not yet recorded); the new head, or None if nothing was new."""
        if not entries:
            return None
        delay = RETRY_BASE_SECONDS
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await self._append_once(model, entries, generation, now)
            except KubeError as e:
                self._tails.pop(model.uid, None)  # read again: another write may have landed
                if attempt == ATTEMPTS:
                    log.error("%s/%s: ledger write failed %d times, the pass will be retried: %s", model.namespace,
                              model.name, attempt, e)
                    raise
                log.warning("%s/%s: ledger write failed (attempt %d), retrying: %s", model.namespace, model.name,
                            attempt, e)
                await asyncio.sleep(0 if isinstance(e, Conflict) else delay)
                delay *= 2
        return None  # unreachable

    async def _append_once(self, model: ModelObject, entries: Sequence[Entry], generation: int,
                           now: dt.datetime) -> api.LedgerHead | None:
        tail = self._tails.get(model.uid) or await self._load_tail(model)
        new = [e for e in entries if e.key not in tail.keys]
        if not new:
            self._tails[model.uid] = tail
            return head_of(tail.last) if tail.last is not None else None
        last = tail.last
        fresh: list[api.LedgerRecord] = []
        for entry in new:
            record = chain(last, entry, model=model.name, model_uid=model.uid, generation=generation, now=now,
                           key_id=self._signer.key_id)
            record = record.model_copy(update={"signature": self._signer.sign(record.hash)})
            fresh.append(record)
            last = record
        segment, records, version = tail.segment, tail.records, tail.resource_version
        while fresh:
            room = SEGMENT_RECORDS - len(records)
            if room <= 0:
                segment, records, version = segment + 1, [], None
                continue
            batch, fresh = fresh[:room], fresh[room:]
            version = await self._write(model, segment, [*records, *batch], version)
            records = [*records, *batch]
        assert last is not None
        self.records += len(new)
        self._tails[model.uid] = _Tail(segment=segment, resource_version=version, records=records, last=last,
                                       keys=[*tail.keys, *(e.key for e in new)][-RECENT_KEYS:])
        if tail.resource_version is None or segment != tail.segment:
            await self._prune(model, now)
        return head_of(last)

    async def _write(self, model: ModelObject, segment: int, records: list[api.LedgerRecord],
                     resource_version: str | None) -> str:
        spec = api.ModelLedgerSpec(model_ref=api.ModelRef(name=model.name), model_uid=model.uid, segment=segment,
                                   records=records)
        meta: dict[str, Any] = {"name": segment_name(model, segment), "namespace": model.namespace,
                                "labels": {api.LABEL_MODEL: model.name, LABEL_MODEL_UID: model.uid,
                                           api.LABEL_MANAGED_BY: "modelwarden"}}
        body = {"apiVersion": api.API_VERSION, "kind": "ModelLedger", "metadata": meta, "spec": spec.wire()}
        what = f"append to the ledger of {model.namespace}/{model.name} (segment {segment})"
        self.writes += 1
        if resource_version is None:
            out = await self._kube.call(what, self._kube.custom.create_namespaced_custom_object, api.GROUP,
                                        api.VERSION, model.namespace, api.LEDGER_PLURAL, body)
        else:
            meta["resourceVersion"] = resource_version
            out = await self._kube.call(what, self._kube.custom.replace_namespaced_custom_object, api.GROUP,
                                        api.VERSION, model.namespace, api.LEDGER_PLURAL, meta["name"], body)
        return str(out["metadata"]["resourceVersion"])

    async def _prune(self, model: ModelObject, now: dt.datetime) -> None:
        """Delete whole segments past retention, oldest first; the open segment always stays."""
        listed = await self._kube.call(
            "list ledger segments", self._kube.custom.list_namespaced_custom_object, api.GROUP, api.VERSION,
            model.namespace, api.LEDGER_PLURAL, label_selector=f"{LABEL_MODEL_UID}={model.uid}")
        items = sorted(listed.get("items", []), key=lambda o: int(o["spec"]["segment"]))
        for obj in items[:-1]:
            records = obj["spec"].get("records") or []
            newest = dt.datetime.fromisoformat(records[-1]["time"].replace("Z", "+00:00")) if records else now
            if now - newest <= self._retention:
                break
            await self._kube.call("delete an expired ledger segment",
                                  self._kube.custom.delete_namespaced_custom_object, api.GROUP, api.VERSION,
                                  model.namespace, api.LEDGER_PLURAL, obj["metadata"]["name"])
            log.info("%s/%s: ledger segment %s expired (retention %s)", model.namespace, model.name,
                     obj["metadata"]["name"], self._retention)
