"""Admin calls to a model's inference servers (through its Services): flush a queue, warm caches.

The URL of a track's Service comes from a template (default: in-cluster DNS), so a local operator can reach
servers running on loopback. Best effort: a failure is returned, never raised.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from modelwarden.adapters.manifests import ModelObject
from modelwarden.api.v1alpha1 import Track

DEFAULT_URL_TEMPLATE = "http://{service}.{namespace}.svc:8080"


class ServerAdmin(Protocol):
    async def call(self, model: ModelObject, track: Track, action: str) -> str | None: ...
    async def reenable(self, model: ModelObject, track: Track, actor: str, reason: str) -> str | None: ...
    async def feedback(self, model: ModelObject, track: Track, since: float,
                       stakeholders: tuple[str, ...]) -> tuple[list[Any], str | None]:
        """Critical feedback records (with their predictions) since ``since``; or what went wrong."""


class HTTPServerAdmin:
    def __init__(self, token: str | None, url_template: str = DEFAULT_URL_TEMPLATE, timeout: float = 5.0) -> None:
        self._token, self._template, self._timeout = token, url_template, timeout

    def _url(self, model: ModelObject, track: Track, path: str) -> str:
        return self._template.format(service=model.deployment_name(track), namespace=model.namespace,
                                     model=model.name, track=track) + path

    async def feedback(self, model: ModelObject, track: Track, since: float,
                       stakeholders: tuple[str, ...]) -> tuple[list[Any], str | None]:
        if not self._token:
            return [], "no admin token configured (MODELWARDEN_ADMIN_TOKEN)"
        url = self._url(model, track, "/admin/feedback")
        params = {"since": f"{since:.3f}", "severity": "critical", "stakeholder": list(stakeholders)}
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                resp = await http.get(url, params=params, headers={"Authorization": f"Bearer {self._token}"})
        except httpx.HTTPError as e:
            return [], f"GET {url}: {type(e).__name__}: {e}"
        if resp.status_code != 200:
            return [], f"GET {url}: HTTP {resp.status_code}"
        return list(resp.json().get("records", [])), None

    async def reenable(self, model: ModelObject, track: Track, actor: str, reason: str) -> str | None:
        """Lift DISABLED_BY_GOVERNANCE on the track's servers (a ModelAction ``enable``): None, or what failed.
        A server that is not disabled answers 409, which is not a failure: the request is idempotent."""
        if not self._token:
            return "no admin token configured (MODELWARDEN_ADMIN_TOKEN)"
        url = self._url(model, track, "/admin/reenable")
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                resp = await http.post(url, headers={"Authorization": f"Bearer {self._token}"},
                                       json={"actor": actor, "reason": reason or "ModelAction enable"})
        except httpx.HTTPError as e:
            return f"POST {url}: {type(e).__name__}: {e}"
        return None if resp.status_code < 300 or resp.status_code == 409 else f"POST {url}: HTTP {resp.status_code}"

    async def call(self, model: ModelObject, track: Track, action: str) -> str | None:
        if not self._token:
            return "no admin token configured (MODELWARDEN_ADMIN_TOKEN)"
        url = self._url(model, track, f"/admin/{action}")
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                resp = await http.post(url, headers={"Authorization": f"Bearer {self._token}"})
        except httpx.HTTPError as e:
            return f"POST {url}: {type(e).__name__}: {e}"
        return None if resp.status_code < 300 else f"POST {url}: HTTP {resp.status_code}"
