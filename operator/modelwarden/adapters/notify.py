"""Notifications and Grafana annotations: best effort, retried, never blocking a rollback.

A failure is returned to the caller (which records it as an Event and in the log), not raised: the
rollback has already put traffic back by the time these run.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, Protocol

import httpx

from modelwarden.api.v1alpha1 import Rollback
from modelwarden.engine.timestamps import parse_timestamp

Severity = Literal["page", "warning", "info"]
Flavor = Literal["generic", "slack", "pagerduty"]
RETRIES = 3


class Notifier(Protocol):
    async def notify(self, model: str, namespace: str, severity: Severity, summary: str,
                     rollback: Rollback | None) -> str | None:
        """Send; returns None on success, else what went wrong."""


class Annotator(Protocol):
    async def annotate(self, model: str, namespace: str, rollback: Rollback) -> str | None: ...


async def _post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None,
                timeout: float = 5.0) -> str | None:
    error = "not sent"
    for attempt in range(RETRIES):
        try:
            async with httpx.AsyncClient(timeout=timeout) as http:
                resp = await http.post(url, json=body, headers=headers)
            if resp.status_code < 300:
                return None
            error = f"HTTP {resp.status_code}: {resp.text[:200]}"
            if resp.status_code < 500 and resp.status_code != 429:
                return error
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"
        await asyncio.sleep(0.5 * 2**attempt)
    return error


def payload(flavor: Flavor, model: str, namespace: str, severity: Severity, summary: str,
            rollback: Rollback | None) -> dict[str, Any]:
    """The body for a generic webhook, a Slack incoming webhook, or PagerDuty Events API v2."""
    details: dict[str, Any] = {"model": model, "namespace": namespace, "severity": severity, "summary": summary}
    if rollback is not None:
        details["rollback"] = rollback.wire()
    if flavor == "slack":
        icon = {"page": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}[severity]
        return {"text": f"{icon} ModelWarden {namespace}/{model}: {summary}"}
    if flavor == "pagerduty":
        return {
            "event_action": "trigger",
            # One incident per rollback, however often a resumed operator re-sends it.
            "dedup_key": f"modelwarden/{namespace}/{model}/{rollback.id if rollback else 'metrics'}",
            "payload": {"summary": f"{namespace}/{model}: {summary}"[:1024], "source": "modelwarden",
                        "severity": {"page": "critical", "warning": "warning", "info": "info"}[severity],
                        "component": model, "group": namespace, "custom_details": details},
        }
    return details


class WebhookNotifier:
    def __init__(self, url: str, flavor: Flavor = "generic", routing_key: str | None = None) -> None:
        self._url, self._flavor, self._routing_key = url, flavor, routing_key

    async def notify(self, model: str, namespace: str, severity: Severity, summary: str,
                     rollback: Rollback | None) -> str | None:
        body = payload(self._flavor, model, namespace, severity, summary, rollback)
        if self._flavor == "pagerduty" and self._routing_key:
            body["routing_key"] = self._routing_key
        return await _post(self._url, body)


class LogOnly:
    """Used when nothing is configured: the Events and the log are the notification."""

    async def notify(self, model: str, namespace: str, severity: Severity, summary: str,
                     rollback: Rollback | None) -> str | None:
        return None

    async def annotate(self, model: str, namespace: str, rollback: Rollback) -> str | None:
        return None


def _millis(stamp: str | None) -> int | None:
    if stamp is None:
        return None
    parsed = parse_timestamp(stamp)
    return int(parsed.timestamp() * 1000)


class GrafanaAnnotator:
    """POST /api/annotations: a region from the trigger to traffic restored, tagged for dashboards."""

    def __init__(self, url: str, token: str | None) -> None:
        self._url = url.rstrip("/") + "/api/annotations"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def annotate(self, model: str, namespace: str, rollback: Rollback) -> str | None:
        body: dict[str, Any] = {
            "time": _millis(rollback.started_at),
            "timeEnd": _millis(rollback.traffic_restored_at or rollback.completed_at),
            "tags": ["modelwarden", "rollback", f"model:{model}", f"namespace:{namespace}",
                     f"trigger:{rollback.trigger}", f"rollback:{rollback.id}"],
            "text": (f"{namespace}/{model} rolled back {rollback.from_version} → {rollback.to_version or 'none'} "
                     f"({rollback.trigger}): {rollback.message}"),
        }
        return await _post(self._url, body, headers=self._headers)
