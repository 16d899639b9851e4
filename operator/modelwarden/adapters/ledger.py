"""The decision ledger in the cluster (issue 18): ``ModelLedger`` segments in the model's namespace.

A segment holds up to :data:`~modelwarden.engine.ledger.SEGMENT_RECORDS` records; appending replaces the open
(last) segment with its records plus the new ones, guarded by resourceVersion, or creates the next segment.
Records already written are never changed. Segments are labelled with the model's name and uid and carry **no
owner reference**: deleting the MLModel leaves its ledger; segments whose newest record is older than the
retention (``MODELWARDEN_LEDGER_RETENTION_DAYS``, default 400 days, above the EU AI Act's six months) are deleted,
oldest first, never the open one.

Issue 27: after every append the operator writes the model's **checkpoint** (a cluster-scoped
ModelLedgerCheckpoint named by the model's uid, which no one in the model's namespace can write) with the new head;
before appending to a chain it read, it checks that the stored tail is that head (:func:`tail_problem`). A chain
that does not match — tail or whole ledger deleted, tail rewritten — raises :class:`LedgerBroken`: nothing is
appended, re-chained or re-signed; the pass reports it (condition ``LedgerBroken``) and pages. A model without a
checkpoint (an upgrade, or a cluster administrator who deleted it to accept the chain as stored) adopts its stored
chain and records that it did. An operator whose key the TrustPolicy retired signs nothing.

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
from modelwarden.artifacts.ledger_keys import PUBLIC_KEYS_CONFIGMAP, LedgerSigner, checker
from modelwarden.engine.ledger import (
    SEGMENT_RECORDS,
    Entry,
    TrustedKey,
    chain,
    head_of,
    retired,
    tail_problem,
)
from modelwarden.engine.timestamps import timestamp

__all__ = ["KubeLedger", "LedgerBroken", "LedgerSigner", "LedgerWriter", "segment_name", "trusted_ledger_key",
           "trusted_ledger_keys"]

CHECKPOINT_ADOPTED = "LedgerCheckpointAdopted"


class LedgerBroken(Exception):
    """The stored chain does not end at the operator's checkpoint (or its key is retired): nothing was appended."""

    def __init__(self, reason: api.Reason, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message

log = logging.getLogger("modelwarden.ledger")

LABEL_MODEL_UID = f"{api.GROUP}/model-uid"
ATTEMPTS = 5
RETRY_BASE_SECONDS = 0.2
DEFAULT_RETENTION_DAYS = 400
# how many recent keys are remembered per model, to record a retried decision once
RECENT_KEYS = 2 * SEGMENT_RECORDS


def trusted_ledger_keys(policy: dict[str, Any] | None) -> dict[str, TrustedKey]:
    """The ledger keys a TrustPolicy object trusts, by key id (with their PEMs: :func:`trusted_ledger_pems`)."""
    spec = api.TrustPolicySpec.model_validate((policy or {}).get("spec") or {})
    return {k.key_id: TrustedKey(k.key_id, k.not_before, k.not_after) for k in spec.ledger_keys}


async def trusted_ledger_key(kube: KubeClient, key_id: str) -> TrustedKey | None:
    """This operator's key as the cluster's TrustPolicy lists it; None when it is not there (or no policy)."""
    try:
        policy = await kube.call("read the cluster's TrustPolicy", kube.custom.get_cluster_custom_object, api.GROUP,
                                 api.VERSION, api.TRUST_PLURAL, api.TRUST_POLICY_NAME)
    except KubeError as e:
        if e.status == 403:  # installed without the modelwarden-operator-ledger ClusterRole
            log.warning("cannot read the cluster's TrustPolicy (%s): is the modelwarden-operator-ledger ClusterRole "
                        "bound? Key windows are not checked", e)
            return None
        if e.status == 404:
            return None
        raise
    return trusted_ledger_keys(policy).get(key_id)


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
    # the checkpoint's resourceVersion (None: none exists yet) and what it records of expiry
    checkpoint_version: str | None = None
    expired: tuple[int, str] | None = None
    checkpoint_seq: int | None = None


class KubeLedger:
    def __init__(self, kube: KubeClient, signer: LedgerSigner, *, key_namespace: str,
                 retention_days: int = DEFAULT_RETENTION_DAYS, own_key: TrustedKey | None = None) -> None:
        """``own_key``: this operator's key as the cluster's TrustPolicy lists it (None: not trusted there, e.g.
        an ephemeral key; its records will not verify until a cluster administrator adds it)."""
        self._kube, self._signer, self._key_namespace = kube, signer, key_namespace
        self._retention_days = retention_days
        self._retention = dt.timedelta(days=retention_days)
        self._own_key = own_key
        self._own_signature = checker({signer.key_id: signer.public_pem()})
        self._tails: dict[str, _Tail] = {}
        self.writes = 0  # API writes made to segments
        self.checkpoint_writes = 0  # API writes made to checkpoints (issue 27: one per append)
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
        checkpoint, checkpoint_version = await self._read_checkpoint(model)
        expired = None
        if checkpoint is not None and checkpoint.expired_through is not None and checkpoint.expired_newest:
            expired = (checkpoint.expired_through, checkpoint.expired_newest)
        tail = [api.LedgerRecord.model_validate(r) for obj in items[-2:] for r in (obj.get("spec") or {}).get(
            "records", [])]
        problem = tail_problem(checkpoint, tail, lambda r: self._own_signature(r.key_id, r.hash, r.signature))
        if problem is not None:
            raise LedgerBroken(*problem)
        seq = checkpoint.seq if checkpoint is not None else None
        if not items:
            return _Tail(segment=0, resource_version=None, records=[], last=None,
                         checkpoint_version=checkpoint_version, expired=expired, checkpoint_seq=seq)
        newest = items[-1]
        records = [api.LedgerRecord.model_validate(r) for r in newest["spec"].get("records", [])]
        return _Tail(segment=int(newest["spec"]["segment"]), resource_version=newest["metadata"]["resourceVersion"],
                     records=records, last=tail[-1] if tail else None, keys=[r.key for r in tail][-RECENT_KEYS:],
                     checkpoint_version=checkpoint_version, expired=expired, checkpoint_seq=seq)

    async def _read_checkpoint(self, model: ModelObject) -> tuple[api.LedgerCheckpoint | None, str | None]:
        try:
            obj = await self._kube.call(f"read the ledger checkpoint of {model.namespace}/{model.name}",
                                        self._kube.custom.get_cluster_custom_object, api.GROUP, api.VERSION,
                                        api.CHECKPOINT_PLURAL, model.uid)
        except KubeError as e:
            if e.status == 404:
                return None, None
            raise
        return api.LedgerCheckpoint.model_validate(obj["spec"]), str(obj["metadata"]["resourceVersion"])

    async def _write_checkpoint(self, model: ModelObject, last: api.LedgerRecord, tail: _Tail) -> str:
        spec = api.LedgerCheckpoint(
            namespace=model.namespace, model=model.name, model_uid=model.uid, seq=last.seq, hash=last.hash,
            at=last.time, key_id=last.key_id, retention_days=self._retention_days,
            expired_through=tail.expired[0] if tail.expired else None,
            expired_newest=tail.expired[1] if tail.expired else None)
        meta: dict[str, Any] = {"name": model.uid, "labels": {api.LABEL_MODEL: model.name,
                                                              api.LABEL_MANAGED_BY: "modelwarden"}}
        body = {"apiVersion": api.API_VERSION, "kind": "ModelLedgerCheckpoint", "metadata": meta,
                "spec": spec.wire()}
        what = f"checkpoint the ledger of {model.namespace}/{model.name} at record {last.seq}"
        self.checkpoint_writes += 1
        if tail.checkpoint_version is None:
            out = await self._kube.call(what, self._kube.custom.create_cluster_custom_object, api.GROUP, api.VERSION,
                                        api.CHECKPOINT_PLURAL, body)
        else:
            meta["resourceVersion"] = tail.checkpoint_version
            out = await self._kube.call(what, self._kube.custom.replace_cluster_custom_object, api.GROUP,
                                        api.VERSION, api.CHECKPOINT_PLURAL, model.uid, body)
        return str(out["metadata"]["resourceVersion"])

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
        if retired(self._own_key, now):
            assert self._own_key is not None
            raise LedgerBroken(api.Reason.LEDGER_KEY_RETIRED, (
                f"this operator's ledger key {self._signer.key_id} was retired at {self._own_key.not_after} "
                "(TrustPolicy): it signs nothing new; mount the successor key"))
        tail = self._tails.get(model.uid) or await self._load_tail(model)
        new = [e for e in entries if e.key not in tail.keys]
        if not new:
            if tail.last is not None and tail.checkpoint_version is not None and tail.checkpoint_seq != tail.last.seq:
                # a retry after the segment was written and its checkpoint was not
                tail.checkpoint_version = await self._write_checkpoint(model, tail.last, tail)
                tail.checkpoint_seq = tail.last.seq
            self._tails[model.uid] = tail
            return head_of(tail.last) if tail.last is not None else None
        if tail.checkpoint_version is None and tail.last is not None:
            # no checkpoint, yet a stored chain: an upgrade, or a cluster administrator accepted the chain as stored
            log.warning("%s/%s: no ledger checkpoint; adopting the stored chain at record %d", model.namespace,
                        model.name, tail.last.seq)
            new = [Entry(decision=CHECKPOINT_ADOPTED, key=f"checkpoint/{tail.last.seq}/{tail.last.hash[:16]}",
                         inputs={"message": f"no checkpoint found: the chain as stored (head {tail.last.seq}) was "
                                            "adopted (an upgrade, or a cluster administrator's repair)"}), *new]
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
        self._tails.pop(model.uid, None)  # until the checkpoint is written: a failure below reads everything again
        if tail.resource_version is None or segment != tail.segment:
            tail.expired = await self._prune(model, now) or tail.expired
        checkpoint_version = await self._write_checkpoint(model, last, tail)
        self._tails[model.uid] = _Tail(segment=segment, resource_version=version, records=records, last=last,
                                       keys=[*tail.keys, *(e.key for e in new)][-RECENT_KEYS:],
                                       checkpoint_version=checkpoint_version, expired=tail.expired,
                                       checkpoint_seq=last.seq)
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

    async def _prune(self, model: ModelObject, now: dt.datetime) -> tuple[int, str] | None:
        """Delete whole segments past retention, oldest first; the open segment always stays. Returns the newest
        record deleted (seq, time) for the checkpoint, None if nothing was."""
        listed = await self._kube.call(
            "list ledger segments", self._kube.custom.list_namespaced_custom_object, api.GROUP, api.VERSION,
            model.namespace, api.LEDGER_PLURAL, label_selector=f"{LABEL_MODEL_UID}={model.uid}")
        items = sorted(listed.get("items", []), key=lambda o: int(o["spec"]["segment"]))
        expired = None
        for obj in items[:-1]:
            records = obj["spec"].get("records") or []
            newest = dt.datetime.fromisoformat(records[-1]["time"].replace("Z", "+00:00")) if records else now
            if now - newest <= self._retention:
                break
            if records:
                expired = (int(records[-1]["seq"]), timestamp(newest))
            await self._kube.call("delete an expired ledger segment",
                                  self._kube.custom.delete_namespaced_custom_object, api.GROUP, api.VERSION,
                                  model.namespace, api.LEDGER_PLURAL, obj["metadata"]["name"])
            log.info("%s/%s: ledger segment %s expired (retention %s)", model.namespace, model.name,
                     obj["metadata"]["name"], self._retention)
        return expired
