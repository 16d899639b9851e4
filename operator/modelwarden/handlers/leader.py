"""Lease-based leader election, the client-go way, so several operator replicas are safe: only the holder of
one ``coordination.k8s.io/v1`` Lease acts.

- A candidate reads the Lease every ``retry_period`` and takes it when it is free (no holder: released), held by
  itself, or expired. Expiry is judged on *this replica's* monotonic clock — ``lease_duration`` after it last saw
  the record change — never on the renewTime another machine wrote, so clock skew cannot cut a lease short
  (client-go's ``observedTime``). A fresh candidate therefore waits one full lease duration before taking a
  lease it has never seen renewed.
- Writes carry the resourceVersion that was read: of two candidates racing for an expired lease one gets 409.
- The leader renews every ``retry_period``; if it cannot renew within ``renew_deadline`` (< lease_duration, so it
  stops believing before anyone else may take over), or it sees another holder, it stops leading at once.
- A clean shutdown releases the Lease (no holder, leaseDuration 1 s): the next replica takes over within one
  ``retry_period`` instead of a whole lease duration.

:func:`may_hold` is the decision, pure and table-tested; :class:`LeaderElector` is the loop around it. kopf's
own peering is not used (the operator runs kopf ``standalone``): it pauses other operators while one is alive,
with no lease, fencing or release semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from modelwarden.adapters.kube import Conflict, KubeError
from modelwarden.adapters.leases import Leases
from modelwarden.handlers import metrics

log = logging.getLogger("modelwarden.leader")

MICROTIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def microtime(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime(MICROTIME)


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec, as far as election is concerned (times kept as the wire's MicroTime strings)."""

    holder: str = ""
    duration_seconds: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> LeaseRecord:
        spec = spec or {}
        return cls(holder=spec.get("holderIdentity") or "", duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
                   acquire_time=spec.get("acquireTime"), renew_time=spec.get("renewTime"),
                   transitions=int(spec.get("leaseTransitions") or 0))

    def spec(self) -> dict[str, Any]:
        return {"holderIdentity": self.holder or None, "leaseDurationSeconds": self.duration_seconds,
                "acquireTime": self.acquire_time, "renewTime": self.renew_time, "leaseTransitions": self.transitions}


def may_hold(record: LeaseRecord | None, me: str, now: float, observed_at: float) -> bool:
    """May ``me`` take (or keep) the lease described by ``record``, which this replica first saw, in this exact
    state, at ``observed_at``? ``now`` and ``observed_at`` are readings of the same local monotonic clock.

    Yes when there is no lease yet, nobody holds it (released), ``me`` holds it, or its holder has not renewed it
    for a whole lease duration as observed here."""
    if record is None or not record.holder or record.holder == me:
        return True
    return now >= observed_at + record.duration_seconds


def next_record(current: LeaseRecord | None, me: str, wall: dt.datetime, duration_seconds: int) -> LeaseRecord:
    """The record ``me`` writes to take or renew the lease: renewing keeps acquireTime and the transition count;
    taking it from anyone else (or from nobody, after a release) counts one more transition."""
    stamp = microtime(wall)
    if current is not None and current.holder == me:
        return replace(current, duration_seconds=duration_seconds, renew_time=stamp)
    transitions = 0 if current is None else current.transitions + 1
    return LeaseRecord(holder=me, duration_seconds=duration_seconds, acquire_time=stamp, renew_time=stamp,
                       transitions=transitions)


def released(current: LeaseRecord, wall: dt.datetime) -> LeaseRecord:
    """What a leader writes on a clean shutdown (as client-go's ReleaseOnCancel): no holder, 1-second duration."""
    stamp = microtime(wall)
    return LeaseRecord(holder="", duration_seconds=1, acquire_time=stamp, renew_time=stamp,
                       transitions=current.transitions)


@dataclass(frozen=True)
class ElectionConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        # client-go's checks: the leader must give up before anyone else may take over, with jitter room.
        if not self.lease_duration > self.renew_deadline > self.retry_period * 1.2 > 0:
            raise ValueError(f"leader election needs lease duration ({self.lease_duration}s) > renew deadline "
                             f"({self.renew_deadline}s) > 1.2 x retry period ({self.retry_period}s) > 0")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaderElector:
    """Runs as one asyncio task: campaign until elected, call ``on_started`` (in its own task), then renew until
    the process ends; on losing the lease call ``on_stopped`` (which should end all acting at once — the
    operator exits, as client-go's ``OnStoppedLeading`` usually does)."""

    def __init__(self, leases: Leases, config: ElectionConfig, on_started: Callable[[], Awaitable[None]],
                 on_stopped: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], dt.datetime] = _utcnow) -> None:
        self.leases, self.config = leases, config
        self.on_started, self.on_stopped = on_started, on_stopped
        self.clock, self.wall = clock, wall
        self.leading = False
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        return f"Lease {self.config.namespace}/{self.config.name}"

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="modelwarden-leader-election")

    async def run(self) -> None:
        log.info("leader election: campaigning for %s as %s", self.where, self.config.identity)
        began = self.clock()
        while not await self._round():
            await asyncio.sleep(random.uniform(self.config.retry_period, self.config.retry_period * 1.2))
        self.leading = True
        metrics.LEADER.set(1)
        log.warning("leader election: became the leader (%s, identity %s) after %.1fs of campaigning",
                    self.where, self.config.identity, self.clock() - began)
        self._started = asyncio.create_task(self._start_leading(), name="modelwarden-leader-started")
        last_renewed = self.clock()
        while True:
            await asyncio.sleep(self.config.retry_period)
            remaining = last_renewed + self.config.renew_deadline - self.clock()
            try:
                renewed = await asyncio.wait_for(self._round(), timeout=max(0.1, remaining))
            except TimeoutError:
                renewed = False
            if renewed:
                last_renewed = self.clock()
                continue
            observed = self._observed
            if observed is not None and observed.holder and observed.holder != self.config.identity:
                self._lose(f"{self.where} is now held by {observed.holder}")
                return
            if self.clock() - last_renewed >= self.config.renew_deadline:
                self._lose(f"could not renew {self.where} within the renew deadline "
                           f"({self.config.renew_deadline:.0f}s)")
                return

    async def _start_leading(self) -> None:
        try:
            await self.on_started()
        except Exception as e:
            log.exception("leader election: starting to lead failed")
            self._lose(f"starting to lead failed: {e}")

    def _lose(self, why: str) -> None:
        self.leading = False
        metrics.LEADER.set(0)
        log.critical("leader election: lost leadership: %s; stopping at once", why)
        self.on_stopped(why)

    def _observe(self, record: LeaseRecord | None) -> None:
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()

    async def _round(self) -> bool:
        """One try to acquire or renew; False when the lease is someone else's or the write lost a race."""
        cfg = self.config
        try:
            lease = await self.leases.get(cfg.namespace, cfg.name)
            if lease is None:
                record = next_record(None, cfg.identity, self.wall(), round(cfg.lease_duration))
                await self.leases.create(cfg.namespace, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace,
                                 "labels": {"app.kubernetes.io/part-of": "modelwarden"}},
                    "spec": record.spec()})
                self._observe(record)
                return True
            current = LeaseRecord.from_spec(lease.get("spec"))
            self._observe(current)
            if not may_hold(current, cfg.identity, self.clock(), self._observed_at):
                return False
            record = next_record(current, cfg.identity, self.wall(), round(cfg.lease_duration))
            await self.leases.replace(cfg.namespace, cfg.name, {**lease, "spec": record.spec()})
            self._observe(record)
            return True
        except Conflict:
            log.info("leader election: %s changed while writing it; retrying", self.where)
            return False
        except KubeError as e:
            log.warning("leader election: %s", e)
            return False

    async def release(self) -> None:
        """Stop campaigning/renewing; if leading, hand the lease back so another replica takes over at once."""
        for task in (self._task, self._started):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if not self.leading:
            return
        self.leading = False
        metrics.LEADER.set(0)
        try:
            lease = await self.leases.get(self.config.namespace, self.config.name)
            if lease is None or LeaseRecord.from_spec(lease.get("spec")).holder != self.config.identity:
                return
            record = released(LeaseRecord.from_spec(lease.get("spec")), self.wall())
            await self.leases.replace(self.config.namespace, self.config.name, {**lease, "spec": record.spec()})
            log.warning("leader election: released %s", self.where)
        except KubeError as e:
            log.warning("leader election: could not release %s (others take over when it expires): %s",
                        self.where, e)
