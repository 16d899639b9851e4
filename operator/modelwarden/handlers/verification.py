"""Artifact verification off the reconcile workers, fair across namespaces (issue 24, item 5).

A reconcile asks :meth:`VerificationPool.verdict` for a model's verdict and moves on: the answer is the verdict
when it is in, else ``None`` (pending; the pool wakes the model when it arrives). Verifications wait in one queue
per namespace; the queues are served round-robin, at most one verification in flight per namespace and at most
``capacity`` in all, each under its own overall deadline. A namespace full of slow, huge or hostile artifacts
therefore holds one slot and delays only its own models; a model elsewhere waits at most for one turn of the
round-robin, and its reconcile (and rollback) never waits for any verification but its own.

A verdict that arrives within ``grace_seconds`` of being started is used by the same pass: the common case (a
small artifact) costs no extra pass and no extra status write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from modelwarden.api import v1alpha1 as api
from modelwarden.engine.decision import ArtifactCheck
from modelwarden.engine.rollout import RETRY_AFTER_FAILURE
from modelwarden.handlers import metrics as own_metrics
from modelwarden.handlers.caches import Key

log = logging.getLogger("modelwarden.verification")

# How long a pass waits for a verification it has just started before it records VerificationPending.
GRACE_SECONDS = 0.5


@dataclass
class _Job:
    ident: Hashable
    run: Callable[[], Awaitable[ArtifactCheck]]
    uri: str
    deadline_seconds: float
    task: asyncio.Task[None] | None = None


class VerificationPool:
    def __init__(self, wake: Callable[[Key], None], capacity: int = 2, grace_seconds: float = GRACE_SECONDS) -> None:
        self._wake = wake
        self._capacity = capacity
        self._grace = grace_seconds
        self._jobs: dict[Key, _Job] = {}  # asked for: waiting in its namespace's queue, or running
        self._queues: dict[str, deque[Key]] = {}
        self._turns: deque[str] = deque()  # namespaces with a waiting verification, in round-robin order
        self._running: dict[str, Key] = {}  # namespace -> the one verification it has in flight
        self._verdicts: dict[Key, tuple[Hashable, ArtifactCheck]] = {}
        self._not_before: dict[Key, tuple[Hashable, float]] = {}  # a failed verification's retry time

    async def verdict(self, key: Key, ident: Hashable, run: Callable[[], Awaitable[ArtifactCheck]], *, uri: str,
                      deadline_seconds: float) -> ArtifactCheck | None:
        """The verdict for ``ident`` (what is verified, and how) of model ``key``, taken once it is in; else
        ``None``, with the verification asked for (``run`` under ``deadline_seconds``) if it was not already."""
        done = self._verdicts.get(key)
        if done is not None and done[0] == ident:
            del self._verdicts[key]
            retry = RETRY_AFTER_FAILURE.get(done[1].failure) if done[1].error is not None else None
            if retry is not None:
                # An artifact too large or too slow is not verified again before the engine's retry interval,
                # however often its model is reconciled meanwhile (an unavailable one is cheap: the engine paces it).
                self._not_before[key] = (ident, asyncio.get_running_loop().time() + retry)
            return done[1]
        backoff = self._not_before.get(key)
        if backoff is not None:
            loop = asyncio.get_running_loop()
            if backoff[0] == ident and loop.time() < backoff[1]:
                loop.call_at(backoff[1], self._wake, key)  # the work queue keeps one wake per model
                return None
            del self._not_before[key]
        job = self._jobs.get(key)
        if job is not None and job.ident != ident:
            self.forget(key)  # the model now wants something else verified
            job = None
        if job is None or (job.task is not None and job.task.done()):
            # A task that ended without a verdict was cancelled with the event loop that ran it: ask again.
            self._jobs.pop(key, None)
            job = _Job(ident, run, uri, deadline_seconds)
            self._jobs[key] = job
            self._enqueue(key)
        waiting = job.task is None
        self._dispatch()
        if waiting and job.task is not None and self._grace > 0:  # started by this call
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(job.task), self._grace)
            done = self._verdicts.get(key)
            if done is not None and done[0] == ident:
                del self._verdicts[key]
                return done[1]
        return None

    def forget(self, key: Key) -> None:
        """Drop whatever is asked for, running or known for ``key`` (the model is gone or wants another check)."""
        job = self._jobs.pop(key, None)
        self._verdicts.pop(key, None)
        self._not_before.pop(key, None)
        namespace = key[0]
        queue = self._queues.get(namespace)
        if queue is not None and key in queue:
            queue.remove(key)
        if job is not None and job.task is not None and not job.task.done():
            job.task.cancel()  # its finally frees the namespace's slot

    def in_flight(self) -> int:
        return len(self._running)

    def _enqueue(self, key: Key) -> None:
        namespace = key[0]
        queue = self._queues.setdefault(namespace, deque())
        if key not in queue:
            queue.append(key)
        if namespace not in self._turns:
            self._turns.append(namespace)
        own_metrics.VERIFICATIONS_WAITING.set(sum(len(q) for q in self._queues.values()))

    def _dispatch(self) -> None:
        """Start waiting verifications, round-robin over namespaces, while slots are free."""
        skipped = 0
        while len(self._running) < self._capacity and skipped < len(self._turns):
            namespace = self._turns.popleft()
            queue = self._queues.get(namespace)
            if not queue:
                self._queues.pop(namespace, None)
                continue
            if namespace in self._running:  # its one slot is taken: its turn comes again later
                self._turns.append(namespace)
                skipped += 1
                continue
            skipped = 0
            key = queue.popleft()
            if queue:
                self._turns.append(namespace)
            else:
                del self._queues[namespace]
            job = self._jobs[key]
            self._running[namespace] = key
            job.task = asyncio.get_running_loop().create_task(self._run(key, job), name=f"verify-{key[0]}/{key[1]}")
        own_metrics.VERIFICATIONS_WAITING.set(sum(len(q) for q in self._queues.values()))
        own_metrics.VERIFICATIONS_RUNNING.set(len(self._running))

    async def _run(self, key: Key, job: _Job) -> None:
        verdict: ArtifactCheck | None = None
        try:
            async with asyncio.timeout(job.deadline_seconds):
                verdict = await job.run()
        except TimeoutError:
            verdict = ArtifactCheck(uri=job.uri, error=f"not verified within spec.artifact.limits."
                                                       f"verifyTimeoutSeconds ({job.deadline_seconds:.0f}s)",
                                    failure=api.Reason.VERIFICATION_TIMED_OUT)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must cost this model a condition, not the pool a slot
            log.exception("verifying %s for %s/%s failed", job.uri, *key)
            verdict = ArtifactCheck(uri=job.uri, error=f"verification failed: {e}")
        finally:
            if self._running.get(key[0]) == key:
                del self._running[key[0]]
            if self._jobs.get(key) is job:
                del self._jobs[key]
                if verdict is not None:
                    self._verdicts[key] = (job.ident, verdict)
                    own_metrics.VERIFICATIONS.labels(outcome=_outcome(verdict)).inc()
            if verdict is not None:  # cancelled: the loop may be closing, start nothing new in it
                self._dispatch()
        self._wake(key)


def _outcome(check: ArtifactCheck) -> str:
    if check.error is not None:
        return check.failure
    return "Verified"
