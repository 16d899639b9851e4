"""Settings of one server process, read from environment variables (the operator sets them on the pod).

Every variable, its default and its meaning is in :data:`ENV_VARS`; ``python -m model_server --help-env``
prints that table. Invalid values stop the process at start-up with a message naming the variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from model_server.auth import ADMIN_AUDIENCE, configured
from modelwarden.artifacts import FeatureContract, is_sha256_hex

Track = Literal["stable", "canary"]
Format = Literal["skops", "onnx", "joblib"]

# Error kinds that count towards DISABLED_BY_GOVERNANCE by default: failures of the model itself. A client's
# bad payload (FEATURE_MISMATCH, INVALID_INPUT) is refused before the model runs and serves nothing wrong, so
# it must not be able to switch the model off for every other client; canary analysis watches those instead.
DEFAULT_GOVERNANCE_KINDS = ("PREDICT_ERROR", "NON_FINITE_OUTPUT")

ENV_VARS: dict[str, tuple[str, str]] = {
    "MODEL_NAME": ("(required)", "MLModel name; the `model` label and the OIP model name"),
    "MODEL_VERSION": ("(required)", "version being served; the `version` label"),
    "MODEL_TRACK": ("stable", "stable | canary; the `track` label"),
    "ARTIFACT_DIR": ("(required)", "local directory holding manifest.json, model_meta.json and the model file"),
    "ARTIFACT_SHA256": ("(required)", "expected SHA256 of the model file (from MLModel spec.artifact.sha256)"),
    "MODEL_FORMAT": ("(required)", "skops | onnx | joblib; must match the manifest"),
    "ALLOW_JOBLIB": ("false", "true to accept joblib (pickle) artifacts; refused otherwise"),
    "SKOPS_TRUSTED_TYPES": ("", "extra comma-separated types to trust in skops files, beyond the built-in list"),
    "FEATURE_CONTRACT": ("", 'JSON {"name": ..., "features": [...]}; must equal model_meta.json features'),
    "MODEL_ENABLED": ("true", "initial kill-switch position (MLModel spec.enabled); false serves neutral only"),
    "NEUTRAL_PREDICTION": ("0.0", "the answer while disabled (a decimal string)"),
    "SLO_OBJECTIVE": ("99.9", "availability objective in percent (MLModel spec.slo.objective); exported as "
                              "ml_slo_objective_ratio for the error-budget rules"),
    "FEEDBACK_DSN": ("feedback.sqlite3", "SQLite file path (or sqlite:///path) or postgresql://... DSN"),
    "RECORD_FLUSH_SECONDS": ("0.25", "prediction records are written to the feedback store this often (a prediction "
                                     "becomes feedback-able on other replicas within it)"),
    "RECORD_BUFFER_MAX": ("200000", "prediction records kept in memory while the feedback store is down or behind; "
                                    "beyond it the oldest are dropped and counted in "
                                    "ml_prediction_records_dropped_total"),
    "STORE_THREAD_IDLE": ("false", "true: the feedback store thread runs in the idle scheduling class, so no request "
                                   "waits for a records flush, and the event loop lends it the core when it starves "
                                   "(model_server/priority.py). For a container whose CPU cgroup holds this server "
                                   "alone, as the operator's pods; elsewhere other processes would starve it"),
    "FEEDBACK_JOIN_WAIT_SECONDS": ("2", "POST /feedback for a prediction not in the store yet waits this long for "
                                        "another replica's flush before answering 404"),
    "PREDICTION_RETENTION_SECONDS": ("2592000", "prediction records without feedback are deleted after this"),
    "PREDICTION_RETENTION_MAX_ROWS": ("1000000", "and at most this many per model are kept (oldest go first)"),
    "FEEDBACK_RETENTION_SECONDS": ("31536000", "feedback labels (and the predictions they label) are deleted this long "
                                               "after they were received (default 365 days; keep >= 6 months where "
                                               "a regulator requires it)"),
    # Who may call /admin/* and /shadow/compare (model_server/auth.py): ServiceAccount tokens, verified offline.
    "SERVICE_ACCOUNT_JWKS": ("", "the cluster's service-account issuer keys (JWKS JSON, from /openid/v1/jwks; the "
                                 "operator sets it); unset: /admin/* and /shadow/compare answer 403"),
    "SERVICE_ACCOUNT_ISSUER": ("", "the issuer (iss) those tokens must carry"),
    "ADMIN_SUBJECT": ("", "the only subject /admin/* accepts (audience modelwarden.io/admin): the operator's "
                          "ServiceAccount, system:serviceaccount:<namespace>:<name>"),
    "SHADOW_SUBJECT": ("", "the only subject /shadow/compare accepts (audience modelwarden.io/shadow): the model's "
                           "own pod ServiceAccount in its namespace"),
    "SHADOW_TOKEN_FILE": ("", "the stable's projected token (audience modelwarden.io/shadow), sent with every "
                              "mirrored batch; re-read as the kubelet refreshes it"),
    "FAULT_INJECTION": ("false", "true serves /admin/faults (tests and the demo only; the operator sets it only when "
                                 "started with MODELWARDEN_SERVER_FAULT_INJECTION, which no chart value sets)"),
    "GOVERNANCE_MAX_MODEL_ERRORS": ("5", "model errors within the window that switch to DISABLED_BY_GOVERNANCE"),
    "GOVERNANCE_WINDOW_SECONDS": ("300", "sliding window for the count above"),
    "GOVERNANCE_ERROR_KINDS": (",".join(DEFAULT_GOVERNANCE_KINDS), "error kinds that count (comma-separated)"),
    "DRIFT_WINDOW_SIZE": ("2000", "rows in the sliding drift window"),
    "DRIFT_MIN_SAMPLES": ("200", "rows needed before PSI is published"),
    "DRIFT_INTERVAL_SECONDS": ("15", "how often PSI is recomputed (off the request path)"),
    "DRIFT_DEGRADED_PSI": ("0.25", "a PSI at or above this marks the state ENABLED|DEGRADED"),
    "HEARTBEAT_SECONDS": ("30", "period of the HEARTBEAT log line"),
    "WARMUP_ROUNDS": ("20", "warm-up rounds (batches of 1 and 32 rows) before ready"),
    "MAX_BODY_BYTES": ("4194304", "larger request bodies are refused with 413"),
    "MAX_BATCH_ROWS": ("10000", "rows per /predict or infer request"),
    "MLMODEL_WATCH": ("false", "true to follow spec.enabled of the MLModel through the Kubernetes API"),
    "MLMODEL_NAMESPACE": ("default", "namespace of the MLModel to follow"),
    "MLMODEL_RESOURCE_NAME": ("$MODEL_NAME", "name of the MLModel to follow"),
    "HOST": ("127.0.0.1", "listen address (a pod sets 0.0.0.0)"),
    "PORT": ("8080", "listen port"),
    "HTTP_HEADER_TIMEOUT_SECONDS": ("10", "a request's headers must arrive within this (else 408 and the connection "
                                          "is closed)"),
    "HTTP_BODY_TIMEOUT_SECONDS": ("30", "and its body within this after the headers (else 408, closed)"),
    "MAX_CONNECTIONS": ("1024", "open connections per server; beyond it a new connection gets 503 and is closed"),
    "GRACEFUL_SHUTDOWN_SECONDS": ("20", "how long in-flight requests may take to finish after SIGTERM"),
    "LOG_LEVEL": ("INFO", "DEBUG | INFO | WARNING | ERROR"),
    # The shadow stage (issue 20; model_server/shadow.py). The operator sets these on the stable's pods while a
    # candidate runs in shadow; SHADOW_DECISION_THRESHOLD on every pod of a model with a shadow stage (the
    # candidate compares with its own, nothing in a request chooses it).
    "SHADOW_TARGET_URL": ("", "the candidate's base URL: mirror sampled, answered requests there (unset: no mirror)"),
    "SHADOW_PERCENT": ("10", "percent of answered requests mirrored (0-100)"),
    "SHADOW_QUEUE_SIZE": ("1000", "mirror queue bound, in requests; a copy that finds it full is dropped and counted"),
    "SHADOW_TIMEOUT_SECONDS": ("2", "timeout of one mirror POST"),
    "SHADOW_DECISION_THRESHOLD": ("0.5", "a score at or above it is a positive decision, for the agreement share "
                                         "(the candidate's own, from its MLModel's spec.rollout.shadow)"),
}


class ConfigError(ValueError):
    """A missing or invalid environment variable."""


@dataclass(frozen=True)
class Settings:
    model_name: str
    model_version: str
    artifact_dir: Path
    artifact_sha256: str
    model_format: Format
    model_track: Track = "stable"
    allow_joblib: bool = False
    skops_trusted_types: tuple[str, ...] = ()
    feature_contract: FeatureContract | None = None
    model_enabled: bool = True
    neutral_prediction: float = 0.0
    slo_objective_ratio: float = 0.999
    feedback_dsn: str = "feedback.sqlite3"
    record_flush_seconds: float = 0.25
    record_buffer_max: int = 200_000
    store_thread_idle: bool = False
    feedback_join_wait_seconds: float = 2.0
    prediction_retention_seconds: float = 30 * 86400
    prediction_retention_max_rows: int = 1_000_000
    feedback_retention_seconds: float = 365 * 86400
    service_account_jwks: str | None = None
    service_account_issuer: str | None = None
    admin_subject: str | None = None
    shadow_subject: str | None = None
    shadow_token_file: Path | None = None
    fault_injection: bool = False
    governance_max_model_errors: int = 5
    governance_window_seconds: float = 300.0
    governance_error_kinds: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_GOVERNANCE_KINDS))
    drift_window_size: int = 2000
    drift_min_samples: int = 200
    drift_interval_seconds: float = 15.0
    drift_degraded_psi: float = 0.25
    heartbeat_seconds: float = 30.0
    warmup_rounds: int = 20
    max_body_bytes: int = 4 * 1024 * 1024
    max_batch_rows: int = 10_000
    mlmodel_watch: bool = False
    mlmodel_namespace: str = "default"
    mlmodel_resource_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    http_header_timeout_seconds: float = 10.0
    http_body_timeout_seconds: float = 30.0
    max_connections: int = 1024
    graceful_shutdown_seconds: float = 20.0
    log_level: str = "INFO"
    shadow_target_url: str | None = None
    shadow_percent: float = 10.0
    shadow_queue_size: int = 1000
    shadow_timeout_seconds: float = 2.0
    shadow_decision_threshold: float = 0.5

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every variable; :class:`ConfigError` names the first bad one."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        track = reader.choice("MODEL_TRACK", ("stable", "canary"))
        fmt = reader.choice("MODEL_FORMAT", ("skops", "onnx", "joblib"), required=True)
        sha = reader.text("ARTIFACT_SHA256", required=True).lower()
        if not is_sha256_hex(sha):
            raise ConfigError("ARTIFACT_SHA256 must be 64 hex digits")
        neutral = reader.number("NEUTRAL_PREDICTION")
        if not math.isfinite(neutral):
            raise ConfigError("NEUTRAL_PREDICTION must be a finite number")
        kinds = frozenset(k.strip() for k in reader.text("GOVERNANCE_ERROR_KINDS").split(",") if k.strip())
        objective = reader.number("SLO_OBJECTIVE")
        if not 0 < objective < 100:
            raise ConfigError("SLO_OBJECTIVE must be a percentage strictly between 0 and 100")
        return cls(
            model_name=reader.text("MODEL_NAME", required=True),
            model_version=reader.text("MODEL_VERSION", required=True),
            model_track=track,  # type: ignore[arg-type]
            artifact_dir=Path(reader.text("ARTIFACT_DIR", required=True)),
            artifact_sha256=sha,
            model_format=fmt,  # type: ignore[arg-type]
            allow_joblib=reader.flag("ALLOW_JOBLIB"),
            skops_trusted_types=tuple(t.strip() for t in reader.text("SKOPS_TRUSTED_TYPES").split(",") if t.strip()),
            feature_contract=reader.contract("FEATURE_CONTRACT"),
            model_enabled=reader.flag("MODEL_ENABLED"),
            neutral_prediction=neutral,
            slo_objective_ratio=objective / 100,
            feedback_dsn=reader.text("FEEDBACK_DSN"),
            record_flush_seconds=reader.number("RECORD_FLUSH_SECONDS", minimum=0.01),
            record_buffer_max=reader.integer("RECORD_BUFFER_MAX", minimum=1),
            store_thread_idle=reader.flag("STORE_THREAD_IDLE"),
            feedback_join_wait_seconds=reader.number("FEEDBACK_JOIN_WAIT_SECONDS", minimum=0),
            prediction_retention_seconds=reader.number("PREDICTION_RETENTION_SECONDS", minimum=1),
            prediction_retention_max_rows=reader.integer("PREDICTION_RETENTION_MAX_ROWS", minimum=1),
            feedback_retention_seconds=reader.number("FEEDBACK_RETENTION_SECONDS", minimum=1),
            service_account_jwks=reader.text("SERVICE_ACCOUNT_JWKS") or None,
            service_account_issuer=reader.text("SERVICE_ACCOUNT_ISSUER") or None,
            admin_subject=reader.text("ADMIN_SUBJECT") or None,
            shadow_subject=reader.text("SHADOW_SUBJECT") or None,
            shadow_token_file=Path(reader.text("SHADOW_TOKEN_FILE")) if reader.text("SHADOW_TOKEN_FILE") else None,
            fault_injection=reader.flag("FAULT_INJECTION"),
            governance_max_model_errors=reader.integer("GOVERNANCE_MAX_MODEL_ERRORS", minimum=1),
            governance_window_seconds=reader.number("GOVERNANCE_WINDOW_SECONDS", minimum=1),
            governance_error_kinds=kinds,
            drift_window_size=reader.integer("DRIFT_WINDOW_SIZE", minimum=10),
            drift_min_samples=reader.integer("DRIFT_MIN_SAMPLES", minimum=1),
            drift_interval_seconds=reader.number("DRIFT_INTERVAL_SECONDS", minimum=0.1),
            drift_degraded_psi=reader.number("DRIFT_DEGRADED_PSI", minimum=0),
            heartbeat_seconds=reader.number("HEARTBEAT_SECONDS", minimum=0.1),
            warmup_rounds=reader.integer("WARMUP_ROUNDS", minimum=0),
            max_body_bytes=reader.integer("MAX_BODY_BYTES", minimum=1024),
            max_batch_rows=reader.integer("MAX_BATCH_ROWS", minimum=1),
            mlmodel_watch=reader.flag("MLMODEL_WATCH"),
            mlmodel_namespace=reader.text("MLMODEL_NAMESPACE"),
            mlmodel_resource_name=env.get("MLMODEL_RESOURCE_NAME") or None,
            host=reader.text("HOST"),
            port=reader.integer("PORT", minimum=0, maximum=65535),
            http_header_timeout_seconds=reader.number("HTTP_HEADER_TIMEOUT_SECONDS", minimum=0.1),
            http_body_timeout_seconds=reader.number("HTTP_BODY_TIMEOUT_SECONDS", minimum=0.1),
            max_connections=reader.integer("MAX_CONNECTIONS", minimum=1),
            graceful_shutdown_seconds=reader.number("GRACEFUL_SHUTDOWN_SECONDS", minimum=0),
            log_level=reader.choice("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR")),
            **_shadow(reader),
        )._checked()

    def _checked(self) -> Settings:
        """The token verifiers can be built (a JWKS that is not one stops the server at start-up)."""
        if self.service_account_jwks:
            try:
                configured(self.service_account_jwks, self.service_account_issuer or "-", ADMIN_AUDIENCE,
                           self.admin_subject or "-")
            except ValueError as e:
                raise ConfigError(f"SERVICE_ACCOUNT_JWKS: {e}") from None
        return self

    @property
    def mlmodel_name(self) -> str:
        return self.mlmodel_resource_name or self.model_name


def _shadow(reader: _Reader) -> dict[str, Any]:
    percent = reader.number("SHADOW_PERCENT", minimum=0)
    if percent > 100:
        raise ConfigError("SHADOW_PERCENT must be within [0, 100]")
    url = reader.text("SHADOW_TARGET_URL")
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"SHADOW_TARGET_URL must be an http:// or https:// URL, got {url!r}")
    threshold = reader.number("SHADOW_DECISION_THRESHOLD")
    if not math.isfinite(threshold):
        raise ConfigError("SHADOW_DECISION_THRESHOLD must be a finite number")
    return {"shadow_target_url": url or None, "shadow_percent": percent,
            "shadow_queue_size": reader.integer("SHADOW_QUEUE_SIZE", minimum=1),
            "shadow_timeout_seconds": reader.number("SHADOW_TIMEOUT_SECONDS", minimum=0.01),
            "shadow_decision_threshold": threshold}


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, *, required: bool = False) -> str:
        value = self.env.get(name, "").strip()
        if not value:
            if required:
                raise ConfigError(f"{name} is required ({ENV_VARS[name][1]})")
            default = ENV_VARS[name][0]
            return "" if default.startswith(("(", "$")) else default
        return value

    def choice(self, name: str, allowed: tuple[str, ...], *, required: bool = False) -> str:
        value = self.text(name, required=required)
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {' | '.join(allowed)}, got {value!r}")
        return value

    def flag(self, name: str) -> bool:
        value = self.text(name).lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")

    def number(self, name: str, *, minimum: float | None = None) -> float:
        raw = self.text(name)
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if minimum is not None and not value >= minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {raw!r}")
        return value

    def integer(self, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
        raw = self.text(name)
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ConfigError(f"{name} must be within [{minimum}, {maximum}], got {raw!r}")
        return value

    def contract(self, name: str) -> FeatureContract | None:
        raw = self.text(name)
        if not raw:
            return None
        try:
            return FeatureContract.model_validate_json(raw)
        except ValidationError as e:
            raise ConfigError(f"{name} is not a valid feature contract: {e.errors()[0]['msg']}") from None
