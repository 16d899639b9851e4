"""Operator settings from the environment (the chart sets them; `--help` of the operator lists them)."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from modelwarden.adapters.notify import Flavor

ENV = {
    "MODELWARDEN_NAMESPACES": "comma-separated namespaces to watch; empty: all",
    "MODELWARDEN_RESYNC_SECONDS": "re-decide every model at least this often (default 60)",
    "MODELWARDEN_WORKERS": "models reconciled at once (default 8; twice as many API calls in flight)",
    "MODELWARDEN_VERIFICATIONS": ("artifact verifications at once, off the reconcile workers, at most one per "
                                  "namespace (default 2)"),
    "MODELWARDEN_PROMETHEUS_URL": "Prometheus base URL; unset: no analysis and no automatic rollback",
    "MODELWARDEN_EVALUATION_INTERVAL": "seconds between metric evaluations (default 30)",
    "MODELWARDEN_PROMETHEUS_TIMEOUT": "seconds per Prometheus query (default 10)",
    "MODELWARDEN_QUERY_STEP": ("seconds between budget samples the triggers read (default 30, the shipped rules' "
                               "interval; never below your rule evaluation interval). The budget trigger judges "
                               "sustain windows of at least 3 steps"),
    "MODELWARDEN_WEBHOOK_URL": "where notifications go; unset: Events and logs only",
    "MODELWARDEN_WEBHOOK_FLAVOR": "generic | slack | pagerduty (default generic)",
    "MODELWARDEN_PAGERDUTY_ROUTING_KEY": "routing key for the pagerduty flavor",
    "MODELWARDEN_GRAFANA_URL": "Grafana base URL for rollback annotations; unset: none",
    "MODELWARDEN_GRAFANA_TOKEN": "Grafana service-account token",
    "MODELWARDEN_SERVICE_ACCOUNT": ("the operator's own ServiceAccount <namespace>/<name>: admin calls carry its "
                                    "TokenRequest tokens (default: the pod's, else "
                                    "modelwarden-system/modelwarden-operator)"),
    "MODELWARDEN_SERVER_FAULT_INJECTION": "tests and the demo only: model servers serve /admin/faults",
    "MODELWARDEN_SERVER_IMAGE": "model server image for MLModels without spec.serving.image "
                                "(default ghcr.io/modelwarden/model-server:0.1.0)",
    "MODELWARDEN_FEEDBACK_DSN": ("PostgreSQL DSN of the models' feedback store (SELECT on its tables is enough): "
                                 "a CriticalFeedback rollback's evidence is read from it ({namespace} and {model} "
                                 "in it are the model's); unset: from the "
                                 "servers' admin API, i.e. only what live pods reach"),
    "MODELWARDEN_SERVER_URL_TEMPLATE": "admin calls go to one URL per track instead of to every pod of the track "
                                       "(servers run as local processes), e.g. http://127.0.0.1:8080; default: "
                                       "the track's pods",
    "MODELWARDEN_LEADER_ELECTION": "true: act only while holding the leader Lease (several replicas); default false",
    "MODELWARDEN_LEASE_NAME": "the leader Lease's name (default modelwarden-operator)",
    "MODELWARDEN_LEASE_NAMESPACE": "the leader Lease's namespace (default: the pod's, else modelwarden-system)",
    "MODELWARDEN_LEASE_DURATION": "seconds a leader's lease lasts without renewal (default 15)",
    "MODELWARDEN_RENEW_DEADLINE": "seconds the leader keeps trying to renew before it stops (default 10)",
    "MODELWARDEN_RETRY_PERIOD": "seconds between lease reads/renewals (default 2)",
    "MODELWARDEN_LEDGER": "false: write no decision ledger (default true)",
    "MODELWARDEN_LEDGER_KEY_FILE": "the ledger's Ed25519 private key (PEM, a mounted Secret); unset: an ephemeral key",
    "MODELWARDEN_LEDGER_KEY_NAMESPACE": "where the ledger's public keys are published (default: the pod's namespace)",
    "MODELWARDEN_LEDGER_RETENTION_DAYS": "ledger segments older than this are deleted (default 400)",
    "MODELWARDEN_FAULT": "tests only: exit abruptly at this named point (after-action-committed)",
}

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _default_lease_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "modelwarden-system"
    except OSError:
        return "modelwarden-system"


def _service_account(value: str | None) -> dict[str, str]:
    """``<namespace>/<name>``; unset: the pod's own account (the ``sub`` of its mounted token), else the default."""
    if value:
        namespace, _, name = value.partition("/")
        if not namespace or not name:
            raise ValueError(f"MODELWARDEN_SERVICE_ACCOUNT={value!r}: use <namespace>/<name>")
        return {"service_account_namespace": namespace, "service_account_name": name}
    try:
        token = (SERVICE_ACCOUNT_NAMESPACE.parent / "token").read_text().strip()
        payload = token.split(".")[1]
        sub = str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])
        _, _, namespace, name = sub.split(":", 3)
        return {"service_account_namespace": namespace, "service_account_name": name}
    except (OSError, IndexError, KeyError, ValueError):
        return {}


def _flag(name: str, value: str | None) -> bool:
    text = (value or "false").strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"{name}={value!r}: use true or false")
    return text in ("true", "1", "yes")


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    resync_seconds: float = 60.0
    workers: int = 8
    verifications: int = 2
    prometheus_url: str | None = None
    evaluation_interval: float = 30.0
    prometheus_timeout: float = 10.0
    query_step: float = 30.0
    webhook_url: str | None = None
    webhook_flavor: Flavor = "generic"
    pagerduty_routing_key: str | None = None
    grafana_url: str | None = None
    grafana_token: str | None = None
    service_account_namespace: str = "modelwarden-system"
    service_account_name: str = "modelwarden-operator"
    server_fault_injection: bool = False
    server_url_template: str | None = None
    feedback_dsn: str | None = None
    leader_election: bool = False
    lease_name: str = "modelwarden-operator"
    lease_namespace: str = "modelwarden-system"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # issue 18: the decision ledger. The key is a mounted Secret (PEM); without one an ephemeral key is made and
    # its public half published like any other (records stay verifiable), with a warning.
    ledger: bool = True
    ledger_key_file: str | None = None
    ledger_key_namespace: str = "modelwarden-system"
    ledger_retention_days: int = 400
    # tests only: exit abruptly at this named point (a crash exactly there)
    fault: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        def get(name: str) -> str | None:
            return os.environ.get(name) or None

        flavor = get("MODELWARDEN_WEBHOOK_FLAVOR") or "generic"
        if flavor not in ("generic", "slack", "pagerduty"):
            raise ValueError(f"MODELWARDEN_WEBHOOK_FLAVOR={flavor!r}: use generic, slack or pagerduty")
        return cls(
            namespaces=tuple(n for n in (get("MODELWARDEN_NAMESPACES") or "").split(",") if n),
            resync_seconds=float(get("MODELWARDEN_RESYNC_SECONDS") or 60),
            workers=int(get("MODELWARDEN_WORKERS") or 8),
            verifications=int(get("MODELWARDEN_VERIFICATIONS") or 2),
            prometheus_url=get("MODELWARDEN_PROMETHEUS_URL"),
            evaluation_interval=float(get("MODELWARDEN_EVALUATION_INTERVAL") or 30),
            prometheus_timeout=float(get("MODELWARDEN_PROMETHEUS_TIMEOUT") or 10),
            query_step=float(get("MODELWARDEN_QUERY_STEP") or 30),
            webhook_url=get("MODELWARDEN_WEBHOOK_URL"),
            webhook_flavor=cast(Flavor, flavor),
            pagerduty_routing_key=get("MODELWARDEN_PAGERDUTY_ROUTING_KEY"),
            grafana_url=get("MODELWARDEN_GRAFANA_URL"),
            grafana_token=get("MODELWARDEN_GRAFANA_TOKEN"),
            **_service_account(get("MODELWARDEN_SERVICE_ACCOUNT")),
            server_fault_injection=_flag("MODELWARDEN_SERVER_FAULT_INJECTION",
                                         get("MODELWARDEN_SERVER_FAULT_INJECTION") or "false"),
            server_url_template=get("MODELWARDEN_SERVER_URL_TEMPLATE") or None,
            feedback_dsn=get("MODELWARDEN_FEEDBACK_DSN"),
            leader_election=_flag("MODELWARDEN_LEADER_ELECTION", get("MODELWARDEN_LEADER_ELECTION")),
            lease_name=get("MODELWARDEN_LEASE_NAME") or "modelwarden-operator",
            lease_namespace=get("MODELWARDEN_LEASE_NAMESPACE") or _default_lease_namespace(),
            lease_duration=float(get("MODELWARDEN_LEASE_DURATION") or 15),
            renew_deadline=float(get("MODELWARDEN_RENEW_DEADLINE") or 10),
            retry_period=float(get("MODELWARDEN_RETRY_PERIOD") or 2),
            ledger=_flag("MODELWARDEN_LEDGER", get("MODELWARDEN_LEDGER") or "true"),
            ledger_key_file=get("MODELWARDEN_LEDGER_KEY_FILE"),
            ledger_key_namespace=get("MODELWARDEN_LEDGER_KEY_NAMESPACE") or _default_lease_namespace(),
            ledger_retention_days=int(get("MODELWARDEN_LEDGER_RETENTION_DAYS") or 400),
            fault=get("MODELWARDEN_FAULT"),
        )
