"""Admin calls to a model's inference servers: flush a queue, warm caches, read feedback evidence.

Each MLModel has its own admin credential: a token derived from the operator's admin key and the model's
identity (namespace, name, uid), written by the operator into a Secret the model owns and mounted into its pods
(``manifests.admin_secret_manifest``). The operator never reads Secrets back: it derives the token again. One
model's pods therefore hold only their own token, and a new model (a new uid) gets a new one.

A call goes to **every pod of a track**, not to one replica behind a Service: :class:`ServerTargets` says which
servers a track has (:class:`modelwarden.adapters.kube.KubeServerTargets` lists the track's pods; a fixed URL
template serves servers running as local processes). Each pod's answer is kept as a :class:`PodCall` so the
incident can say which replica was flushed or warmed and which was not. Best effort: a failure is returned,
never raised. Tokens are never logged or written anywhere but the model's Secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from modelwarden.adapters.manifests import ModelObject
from modelwarden.api.v1alpha1 import Track

DEFAULT_URL_TEMPLATE = "http://{service}.{namespace}.svc:8080"


def derive_admin_token(key: bytes, model: ModelObject) -> str:
    """The admin token of one model: HMAC-SHA256 of its identity under the operator's key (hex)."""
    return hmac.new(key, f"{model.namespace}/{model.name}/{model.uid}".encode(), hashlib.sha256).hexdigest()


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
    def admin_token(self, model: ModelObject) -> str | None:
        """The token the operator writes into the model's admin Secret (None: no admin key configured)."""

    async def call(self, model: ModelObject, track: Track, action: str) -> tuple[list[PodCall], str | None]:
        """``POST /admin/<action>`` on every server of the track: each one's outcome, and what went wrong."""

    async def reenable(self, model: ModelObject, track: Track, actor: str,
                       reason: str) -> tuple[list[PodCall], str | None]:
        """Lift DISABLED_BY_GOVERNANCE on every server of the track (a ModelAction ``enable``)."""

    async def feedback(self, model: ModelObject, track: Track, since: float,
                       stakeholders: tuple[str, ...]) -> tuple[list[Any], list[PodCall], str | None]:
        """Critical feedback records (with their predictions) since ``since`` from every server of the track,
        merged; each server's outcome; or what went wrong."""


class HTTPServerAdmin:
    """Admin calls over HTTP with the model's derived token.

    ``key`` is the operator's admin key (``MODELWARDEN_ADMIN_TOKEN``). ``static_token`` instead sends one token to
    every server (servers started by hand with ``ADMIN_TOKEN``); with neither, every call fails and says why."""

    def __init__(self, static_token: str | None = None, url_template: str = DEFAULT_URL_TEMPLATE,
                 timeout: float = 5.0, *, key: bytes | None = None, targets: ServerTargets | None = None) -> None:
        self._static, self._key, self._timeout = static_token, key, timeout
        self._targets = targets or TemplateTargets(url_template)

    @staticmethod
    def random_key() -> bytes:
        return secrets.token_bytes(32)

    def admin_token(self, model: ModelObject) -> str | None:
        if self._key is not None:
            return derive_admin_token(self._key, model)
        return self._static

    async def _each(self, model: ModelObject, track: Track, action: str, method: str, path: str,
                    params: dict[str, Any] | None = None, *, json: dict[str, Any] | None = None,
                    accepted: tuple[int, ...] = ()) -> tuple[list[tuple[Server, Any]], list[PodCall],
                                                                   str | None]:
        token = self.admin_token(model)
        if not token:
            return [], [], "no admin token configured (MODELWARDEN_ADMIN_TOKEN)"
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
