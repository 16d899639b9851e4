"""Admin calls to a model's inference servers: flush a queue, warm caches, read feedback evidence.

The operator proves itself with a short-lived token of its own ServiceAccount for audience
``modelwarden.io/admin`` (the TokenRequest API: :mod:`modelwarden.adapters.operator_identity`); the servers check
it offline. No shared secret exists: nothing in a model's namespace lets anyone else call these endpoints.

A call goes to **every pod of a track**, not to one replica behind a Service: :class:`ServerTargets` says which
servers a track has (:class:`modelwarden.adapters.kube.KubeServerTargets` lists the track's pods; a fixed URL
template serves servers running as local processes). Each pod's answer is kept as a :class:`PodCall` so the
incident can say which replica was flushed or warmed and which was not. Best effort: a failure is returned,
never raised. Tokens are never logged or written anywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from modelwarden.adapters.manifests import ModelObject
from modelwarden.api.v1alpha1 import Track

DEFAULT_URL_TEMPLATE = "http://{service}.{namespace}.svc:8080"


@dataclass(frozen=True)
class Server:
    """One server of a track: its pod's name (or a label for a local process) and base URL."""

    name: str
    url: str
    # False: a pod that is not serving yet (its readiness includes the warm-up); it is listed, not called.
    callable: bool = True
    why_not: str = ""


@dataclass(frozen=True)
class PodCall:
    """What one server answered to one admin call."""

    pod: str
    action: str
    outcome: str  # "ok" | "failed" | "skipped"
    detail: str = ""

    def wire(self) -> dict[str, str]:
        return {"pod": self.pod, "action": self.action, "outcome": self.outcome, "detail": self.detail}


class ServerTargets(Protocol):
    async def servers(self, model: ModelObject, track: Track) -> list[Server]:
        """The servers of ``track`` now (raises on an API failure)."""


class TemplateTargets:
    """One server per track at a URL from a template (servers running as local processes, or one Service)."""

    def __init__(self, url_template: str = DEFAULT_URL_TEMPLATE) -> None:
        self._template = url_template

    async def servers(self, model: ModelObject, track: Track) -> list[Server]:
        url = self._template.format(service=model.deployment_name(track), namespace=model.namespace,
                                    model=model.name, track=track)
        return [Server(model.deployment_name(track), url)]


class ServerAdmin(Protocol):
    async def call(self, model: ModelObject, track: Track, action: str) -> tuple[list[PodCall], str | None]:
        """``POST /admin/<action>`` on every server of the track: each one's outcome, and what went wrong."""

    async def reenable(self, model: ModelObject, track: Track, actor: str,
                       reason: str) -> tuple[list[PodCall], str | None]:
        """Lift DISABLED_BY_GOVERNANCE on every server of the track (a ModelAction ``enable``)."""

    async def feedback(self, model: ModelObject, track: Track, since: float,
                       stakeholders: tuple[str, ...]) -> tuple[list[Any], list[PodCall], str | None]:
        """Critical feedback records (with their predictions) since ``since`` from every server of the track,
        merged; each server's outcome; or what went wrong."""


TokenSource = Callable[[], Awaitable[str]]


class HTTPServerAdmin:
    """Admin calls over HTTP with the operator's ServiceAccount token (``token_source``: a fresh one per call,
    cached by the source until it nears expiry). Without a source every call fails and says why."""

    def __init__(self, token_source: TokenSource | None = None, url_template: str = DEFAULT_URL_TEMPLATE,
                 timeout: float = 5.0, *, targets: ServerTargets | None = None) -> None:
        self._token_source, self._timeout = token_source, timeout
        self._targets = targets or TemplateTargets(url_template)

    async def _each(self, model: ModelObject, track: Track, action: str, method: str, path: str,
                    params: dict[str, Any] | None = None, *, json: dict[str, Any] | None = None,
                    accepted: tuple[int, ...] = ()) -> tuple[list[tuple[Server, Any]], list[PodCall],
                                                                   str | None]:
        if self._token_source is None:
            return [], [], "no operator identity to call the servers with"
        try:
            token = await self._token_source()
        except Exception as e:  # a TokenRequest the API server refused or did not answer: reported
            return [], [], f"the operator's admin token: {type(e).__name__}: {e}"
        try:
            servers = await self._targets.servers(model, track)
        except Exception as e:  # an API failure listing the pods: best effort, reported
            return [], [], f"listing the {track} servers: {type(e).__name__}: {e}"
        if not servers:
            return [], [], f"no {track} server to call"
        headers = {"Authorization": f"Bearer {token}"}

        async def one(http: httpx.AsyncClient, server: Server) -> tuple[PodCall, Any]:
            if not server.callable:
                return PodCall(server.name, action, "skipped", server.why_not), None
            url = server.url + path
            try:
                resp = await http.request(method, url, params=params, headers=headers, json=json)
            except httpx.HTTPError as e:
                return PodCall(server.name, action, "failed", f"{method} {url}: {type(e).__name__}: {e}"), None
            if resp.status_code in accepted:
                return PodCall(server.name, action, "ok", f"HTTP {resp.status_code}"), None
            if resp.status_code >= 300:
                return PodCall(server.name, action, "failed", f"{method} {url}: HTTP {resp.status_code}"), None
            return PodCall(server.name, action, "ok", f"HTTP {resp.status_code}"), resp.json()

        async with httpx.AsyncClient(timeout=self._timeout) as http:
            results = await asyncio.gather(*(one(http, s) for s in servers))
        calls = [c for c, _ in results]
        failed = [c.detail for c in calls if c.outcome == "failed"]
        answers = [(s, body) for s, (c, body) in zip(servers, results, strict=True) if c.outcome == "ok"]
        return answers, calls, "; ".join(failed) or None

    async def call(self, model: ModelObject, track: Track, action: str) -> tuple[list[PodCall], str | None]:
        _, calls, failure = await self._each(model, track, action, "POST", f"/admin/{action}")
        return calls, failure

    async def feedback(self, model: ModelObject, track: Track, since: float,
                       stakeholders: tuple[str, ...]) -> tuple[list[Any], list[PodCall], str | None]:
        params = {"since": f"{since:.3f}", "severity": "critical", "stakeholder": list(stakeholders)}
        answers, calls, failure = await self._each(model, track, "feedback", "GET", "/admin/feedback", params)
        # One record per prediction: with a shared store every replica returns the same ones.
        merged: dict[str, Any] = {}
        for _, body in answers:
            for record in body.get("records", []):
                merged.setdefault(str(record.get("predictionId", len(merged))), record)
        return list(merged.values()), calls, failure

    async def reenable(self, model: ModelObject, track: Track, actor: str,
                       reason: str) -> tuple[list[PodCall], str | None]:
        # A server that is not disabled answers 409: not a failure, the request is idempotent.
        _, calls, failure = await self._each(model, track, "reenable", "POST", "/admin/reenable",
                                             json={"actor": actor, "reason": reason or "ModelAction enable"},
                                             accepted=(409,))
        return calls, failure
