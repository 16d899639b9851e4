"""Start-up that says what is missing (issue 24, item 8): nothing the operator can run without blocks it, and a
missing prerequisite is one clear log line and a metric, retried with a bounded backoff — never a silent loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from modelwarden.adapters.kube import KubeError
from modelwarden.handlers import metrics
from modelwarden.handlers import operator as op
from modelwarden.handlers.caches import WatchCaches


def missing(name: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("modelwarden_prerequisite_missing", {"prerequisite": name})


class Ledger:
    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    async def publish_key(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise KubeError('publish the ledger\'s public key: 404 namespaces "modelwarden-system" not found', 404)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(op, "PREREQUISITE_RETRY_MIN_SECONDS", 0.001)
    monkeypatch.setattr(op, "PREREQUISITE_RETRY_MAX_SECONDS", 0.004)


def test_a_missing_ledger_key_namespace_is_said_once_measured_and_published_when_it_appears(
        caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger(failures=5)
    seen: list[float | None] = []

    async def run() -> None:
        task = asyncio.create_task(op._publish_ledger_key(ledger, "modelwarden-system"))  # type: ignore[arg-type]
        while ledger.calls < 2:
            await asyncio.sleep(0.001)
        seen.append(missing("ledger-key-namespace/modelwarden-system"))
        await task

    with caplog.at_level(logging.WARNING, logger="modelwarden.operator"):
        asyncio.run(run())
    assert seen == [1.0] and missing("ledger-key-namespace/modelwarden-system") == 0.0
    assert ledger.calls == 6, "retried until published, then stopped"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "said once, not once per retry"
    assert "namespace modelwarden-system does not exist" in errors[0]
    assert "MODELWARDEN_LEDGER_KEY_NAMESPACE" in errors[0], "and how to fix it"
    assert any("prerequisite restored" in r.getMessage() for r in caplog.records)


def test_a_missing_crd_is_said_once_and_the_caches_fill_when_it_is_installed(
        caplog: pytest.LogCaptureFixture) -> None:
    feed = op.Feed(WatchCaches(wake=lambda key: None, forget=lambda key: None))
    attempts = 0

    async def listing() -> dict[str, list[dict[str, Any]]]:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise KubeError("list mlmodels: 404 the server could not find the requested resource", 404)
        return {"mlmodels": [], "modelapprovals": [], "modelactions": [], "deployments": [], "jobs": []}

    with caplog.at_level(logging.WARNING, logger="modelwarden.operator"):
        asyncio.run(op._prime_until_listed(feed, listing))
    assert attempts == 4 and missing("listing") == 0.0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "are the CRDs installed?" in errors[0]
