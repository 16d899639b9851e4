"""``modelwarden.io/v1alpha1``: the MLModel and ModelApproval resources.

These pydantic models are the single source of truth: ``make crds`` renders ``crds/*.yaml`` from them
(:mod:`modelwarden.api.crdgen`), and the operator parses objects with them. Rules a structural schema
cannot say are CEL ``x-kubernetes-validations`` attached here, so the API server rejects bad objects.

No floats in spec: ratios and objectives are decimal strings (``"99.9"``), durations are ``…Seconds``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "modelwarden.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

MLMODEL_PLURAL = "mlmodels"
APPROVAL_PLURAL = "modelapprovals"

SHA256_PATTERN = r"^[a-f0-9]{64}$"
DECIMAL_PATTERN = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$"
# DNS-1123 label, so a version can appear in object names and label values.
VERSION_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
ROLE_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
# Five cron fields (the operator parses the rest and says what is wrong in RetrainingEligible).
SCHEDULE_PATTERN = r"^[0-9A-Za-z*,/#-]+( +[0-9A-Za-z*,/#-]+){4}$"

# Labels and annotations we set or read.
LABEL_MODEL = f"{GROUP}/model"
LABEL_TRACK = f"{GROUP}/track"
LABEL_VERSION = f"{GROUP}/version"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# On every pod: "true" where users may be served. The model's user-facing Service selects it once every pod of
# the model carries it; a shadow stage's candidate and the warm standby carry "false" (no user traffic).
LABEL_SERVING = f"{GROUP}/serving"
ANNOTATION_SHA256 = f"{GROUP}/sha256"
# Removed (issue 27): these annotations decided promote/resume/rollback with nobody proven behind them. The operator
# ignores them and says so (condition AnnotationsIgnored); each maps to the CLI command that replaces it.
ANNOTATION_PROMOTE = f"{GROUP}/promote"
ANNOTATION_RESUME = f"{GROUP}/resume"
ANNOTATION_ROLLBACK = f"{GROUP}/rollback"
IGNORED_ANNOTATIONS = {ANNOTATION_PROMOTE: "modelwarden promote MODEL", ANNOTATION_RESUME: "modelwarden resume MODEL",
                       ANNOTATION_ROLLBACK: "modelwarden rollback MODEL [--to VERSION]"}
# On retraining Jobs: which window (RFC 3339, as a label-safe "20270608t0200z") a Job trains for.
LABEL_RETRAINING_WINDOW = f"{GROUP}/retraining-window"

# "standby": the prior approved version kept warm after a promotion (spec.rollback.standby), served only by a
# rollback.
Track = Literal["stable", "canary", "standby"]


class ConditionType(StrEnum):
    READY = "Ready"
    APPROVED = "Approved"
    ARTIFACT_VERIFIED = "ArtifactVerified"
    PROGRESSING = "Progressing"
    HEALTHY = "Healthy"
    ROLLED_BACK = "RolledBack"
    HALTED = "Halted"
    RETRAINING_ELIGIBLE = "RetrainingEligible"
    # kstatus (Flux) and our Argo CD health check read these with Ready (engine/kstatus.py)
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    # issue 27: a removed annotation (modelwarden.io/promote|resume|rollback) is set and decides nothing
    ANNOTATIONS_IGNORED = "AnnotationsIgnored"
    # issue 27: the decision ledger does not end where the operator's last checkpoint says; nothing is appended
    LEDGER_BROKEN = "LedgerBroken"


class Reason(StrEnum):
    """CamelCase reasons shared by conditions and Events."""

    # Approved
    QUORUM_MET = "QuorumMet"
    AWAITING_APPROVAL = "AwaitingApproval"
    # ArtifactVerified
    SHA256_MATCH = "Sha256Match"
    SHA256_MISMATCH = "Sha256Mismatch"
    ARTIFACT_UNAVAILABLE = "ArtifactUnavailable"
    SIGNATURE_VERIFIED = "SignatureVerified"
    # A required signature that does not verify: the reason is the verifier's own (SignatureMissing,
    # SignatureMalformed, SignerUntrusted, SignatureInvalid, ContentChanged) or this one.
    TRUSTED_KEYS_UNAVAILABLE = "TrustedKeysUnavailable"
    # Verification runs off the reconcile workers (handlers/verification.py): asked for, not yet answered.
    VERIFICATION_PENDING = "VerificationPending"
    # spec.artifact.limits: a file or the directory is bigger than allowed (declared or actually sent)
    ARTIFACT_TOO_LARGE = "ArtifactTooLarge"
    # spec.artifact.limits.verifyTimeoutSeconds passed before the verification finished
    VERIFICATION_TIMED_OUT = "VerificationTimedOut"
    # Progressing / Ready
    DEPLOYING = "Deploying"
    WAITING_FOR_CANARY = "WaitingForCanaryReady"
    STEP_PAUSED = "StepPaused"
    AWAITING_PROMOTE = "AwaitingPromote"
    STEP_ADVANCED = "StepAdvanced"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    DEPLOYED = "Deployed"
    STABLE = "Stable"
    CANARY_ABORTED = "CanaryAborted"
    KILL_SWITCH = "KillSwitchEngaged"
    WAITING_FOR_STABLE = "WaitingForStableReady"
    ANALYSIS_PENDING = "AnalysisPending"
    # Healthy / Halted / RolledBack
    HEALTHY = "WithinBudget"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    ROLLBACK_STARTED = "RollbackStarted"
    TRAFFIC_RESTORED = "TrafficRestored"
    ROLLBACK_COMPLETE = "RollbackComplete"
    NO_ROLLBACK_TARGET = "NoRollbackTarget"
    TARGET_SHA256_MISMATCH = "RollbackTargetSha256Mismatch"
    # Progressing while a rollback waits for a dependency (never a rejection), and the one page a long wait sends
    WAITING_FOR_ARTIFACT_STORE = "WaitingForArtifactStore"
    WAITING_FOR_TRUSTED_KEYS = "WaitingForTrustedKeys"
    ROLLBACK_WAIT_PAGED = "RollbackWaitPaged"
    HALTED = "Halted"
    RESUMED = "Resumed"
    NEW_REVISION = "NewRevision"
    MANUAL_ROLLBACK = "ManualRollback"
    # AnnotationsIgnored (issue 27): modelwarden.io/promote|resume|rollback is set and decides nothing
    REMOVED_ANNOTATION_SET = "RemovedAnnotationSet"
    # RetrainingEligible and retraining Events
    GATES_PASSED = "GatesPassed"
    GATES_FAILED = "GatesFailed"
    WAITING_FOR_WINDOW = "WaitingForWindow"
    GATHERING_GATES = "GatheringGateInputs"
    INVALID_SCHEDULE = "InvalidSchedule"
    RETRAINING_DISABLED = "RetrainingDisabled"
    RETRAINING_REMINDER = "RetrainingReminder"
    RETRAINING_WINDOW_MISSED = "RetrainingWindowMissed"
    RETRAINING_JOB_CREATED = "RetrainingJobCreated"
    RETRAINING_JOB_SUCCEEDED = "RetrainingJobSucceeded"
    RETRAINING_JOB_FAILED = "RetrainingJobFailed"
    # Ready / Reconciling / Stalled (engine/kstatus.py; the other reasons there are the ones above)
    VERIFYING_ARTIFACT = "VerifyingArtifact"
    ROLLING_BACK = "RollingBack"
    RECONCILING = "Reconciling"
    # The shadow stage (issue 20): Progressing while it runs, the trigger (Halted, incident) when it fails
    SHADOW_RUNNING = "ShadowRunning"
    SHADOW_NO_VERDICT = "ShadowNoVerdict"
    SHADOW_PASSED = "ShadowPassed"
    SHADOW_DISAGREEMENT = "ShadowDisagreement"
    # LedgerBroken (issue 27): why the operator stopped appending, or that the chain matches its checkpoint again
    LEDGER_TAIL_MISSING = "LedgerTailMissing"
    LEDGER_TAIL_ALTERED = "LedgerTailAltered"
    LEDGER_KEY_RETIRED = "LedgerKeyRetired"
    LEDGER_INTACT = "LedgerIntact"


class Gate(StrEnum):
    """The retraining gates, as named in status and in the RetrainingEligible message."""

    BIAS_REPORT = "BiasReport"
    ERROR_BUDGET = "ErrorBudget"
    NEW_LABELS = "NewFeedbackLabels"
    FEATURE_AUDIT = "FeatureAudit"


class Phase(StrEnum):
    AWAITING_APPROVAL = "AwaitingApproval"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    STABLE = "Stable"
    ROLLING_BACK = "RollingBack"
    HALTED = "Halted"
    DISABLED = "Disabled"
    FAILED = "Failed"


def _validations(*rules: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """``x-kubernetes-validations`` for a schema node: (rule, message[, fieldPath])."""
    out = []
    for rule in rules:
        entry = {"rule": rule[0], "message": rule[1]}
        if len(rule) == 3:
            entry["fieldPath"] = rule[2]
        out.append(entry)
    return {"x-kubernetes-validations": out}


class _Model(BaseModel):
    """camelCase on the wire; unknown fields ignored when reading (the API server already pruned them)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, no unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --- MLModel spec ---------------------------------------------------------------------------------------


class ArtifactSignature(_Model):
    """A required OpenSSF model-signing signature (``model.sig`` beside the model file) over the whole artifact
    directory, by one of the trusted public keys: every data entry of the named ConfigMap (PEM). Public keys are
    not secret, and a ConfigMap keeps the operator's RBAC free of Secrets."""

    config_map_name: Annotated[str, Field(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="ConfigMap in the model's namespace; each data entry is a trusted PEM public key.")]


class ArtifactLimits(_Model):
    """What the operator reads to verify an artifact, at most: a slow, huge or hostile artifact costs its own
    model a condition (``ArtifactTooLarge``, ``VerificationTimedOut``), never another model's reconcile."""

    max_file_bytes: Annotated[int, Field(
        ge=1, le=1 << 40,
        description="Largest single file (the model file, each file of a signed directory) the operator hashes, "
                    "in bytes; a file declaring or sending more is ArtifactTooLarge. Default 4 GiB.")] = 4 << 30
    max_artifact_bytes: Annotated[int, Field(
        ge=1, le=1 << 40,
        description="Largest signed artifact directory (every file its manifest lists), in bytes. Default 8 GiB.")
    ] = 8 << 30
    verify_timeout_seconds: Annotated[int, Field(
        ge=1, le=3600,
        description="Deadline for one whole verification (hash and signature) of this model's artifact; past it "
                    "the verification stops with VerificationTimedOut and is tried again later. Default 600.")
    ] = 600


class ArtifactRef(_Model):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            ("self.format != 'joblib' || self.allowUnsafeJoblib",
             "format joblib unpickles arbitrary code: set allowUnsafeJoblib: true to opt in", ".format"),
        ),
    )

    uri: Annotated[str, Field(min_length=1, max_length=2048, description="Where the model file is (file://, https://).")]
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN, description="SHA256 of the model file, 64 lowercase hex.")]
    format: Literal["skops", "onnx", "joblib"] = "skops"
    allow_unsafe_joblib: bool = False
    signature: ArtifactSignature | None = Field(
        default=None, description="When set, the artifact must carry a signature by a trusted key (issue 19).")
    limits: ArtifactLimits = Field(
        default_factory=ArtifactLimits,
        description="Byte limits and deadline of the operator's verification of this artifact (issue 24).")


class FeatureContract(_Model):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            ("size(self.features) == self.nFeatures",
             "featureContract.nFeatures must equal the number of features listed", ".nFeatures"),
        ),
    )

    name: Annotated[str, Field(min_length=1, max_length=253)]
    features: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=253)]],
        Field(min_length=1, max_length=1024, json_schema_extra={"x-kubernetes-list-type": "set"},
              description="Feature names in the order the model expects them."),
    ]
    n_features: Annotated[int, Field(ge=1, le=1024)]


class SecretKeyRef(_Model):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    key: Annotated[str, Field(min_length=1, max_length=253)]


class FeedbackStore(_Model):
    """Where prediction records and feedback labels live. It must outlive the pods: every replica of every
    version writes to it, feedback on any replica finds a prediction made by any other, and a rollback's
    incident evidence is read from it. That is PostgreSQL (the DSN from a Secret). The embedded SQLite sits on
    each pod's emptyDir: a label is lost when its pod goes, and is found only on the pod that made the
    prediction; it is for development, and only with ``acceptFeedbackLoss: true`` (the API server refuses it
    otherwise, see :data:`FEEDBACK_STORE_RULE`)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            ("self.type != 'postgresql' || has(self.dsnSecretRef)",
             "a postgresql feedback store needs serving.feedbackStore.dsnSecretRef", ".dsnSecretRef"),
        ),
    )

    type: Literal["postgresql", "sqlite"] = Field(
        default="postgresql",
        description="postgresql (shared by every pod, outlives them) or sqlite (per pod, on its emptyDir: "
                    "development only, needs acceptFeedbackLoss).")
    dsn_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret (model's namespace) and key holding the PostgreSQL DSN; the pods read "
                                  "it as FEEDBACK_DSN.")
    accept_feedback_loss: bool = Field(
        default=False,
        description="type sqlite only: accept that acknowledged feedback is lost when a pod goes and is found "
                    "only on the replica that made the prediction. Development only.")


# The MLModel must name a store that keeps acknowledged feedback; evaluated on the spec so that an MLModel
# without `serving` or `feedbackStore` at all is refused too (defaults do not reach an absent parent).
FEEDBACK_STORE_RULE = (
    "has(self.serving) && has(self.serving.feedbackStore) && (has(self.serving.feedbackStore.dsnSecretRef) || "
    "(has(self.serving.feedbackStore.type) && self.serving.feedbackStore.type == 'sqlite' && "
    "has(self.serving.feedbackStore.acceptFeedbackLoss) && self.serving.feedbackStore.acceptFeedbackLoss))")
FEEDBACK_STORE_MESSAGE = (
    "set serving.feedbackStore.dsnSecretRef (a Secret key holding a PostgreSQL DSN): feedback must outlive the "
    "pods, and the embedded SQLite on each pod's emptyDir loses acknowledged labels when a pod goes and answers "
    "404 for predictions made by another replica or version; for development only, serving.feedbackStore.type: "
    "sqlite with acceptFeedbackLoss: true")


class Serving(_Model):
    image: Annotated[str | None, Field(
        min_length=1, max_length=512,
        description="The server image. Unset: the operator's MODELWARDEN_SERVER_IMAGE (chart `serverImage`), "
                    "default ghcr.io/modelwarden/model-server:0.1.0.")] = None
    replicas: Annotated[int, Field(ge=1, le=1000)] = 2
    neutral_prediction: Annotated[
        str, Field(pattern=r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?$", description="Answer served while disabled.")
    ] = "0.0"
    resources: dict[str, dict[str, str]] | None = Field(
        default=None, description="Container resources (requests/limits), as in a Pod spec.")
    feedback_store: FeedbackStore = Field(default_factory=FeedbackStore)


class Step(_Model):
    set_weight: Annotated[int, Field(ge=1, le=100, description="Percent of traffic on the canary.")]
    pause_seconds: Annotated[
        int | None,
        Field(ge=0, le=604800, description="How long to hold this step; absent means wait for `modelwarden promote`."),
    ] = None


class GatewayAPIRouting(_Model):
    http_route: Annotated[str, Field(min_length=1, max_length=253, description="HTTPRoute (same namespace) to weight.")]


class TrafficRouting(_Model):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            ("self.type != 'gatewayAPI' || has(self.gatewayAPI)", "gatewayAPI routing needs gatewayAPI.httpRoute",
             ".gatewayAPI"),
        ),
    )

    type: Literal["replicas", "gatewayAPI"] = "replicas"
    gateway_api: GatewayAPIRouting | None = Field(default=None, alias="gatewayAPI")


class Analysis(_Model):
    interval_seconds: Annotated[int, Field(ge=5, le=3600)] = 30
    max_error_ratio: Annotated[str, Field(pattern=DECIMAL_PATTERN)] = "0.05"
    max_p99_latency_ms: Annotated[int, Field(ge=1)] = 500
    max_feature_mismatch: Annotated[int, Field(ge=0)] = 0
    min_requests: Annotated[int, Field(ge=0)] = 20


class Shadow(_Model):
    """The shadow stage (before the first canary step): the stable's pods mirror a sampled share of requests,
    after answering them, to the candidate, which scores them on the ``shadow`` track and compares its scores
    with the stable's. No user gets a shadow answer. Step 1 opens only when, after ``durationSeconds`` and at
    least ``minComparedRequests`` compared rows, every criterion holds; a breach halts the candidate. Under the
    ``replicas`` router the candidate's pods are kept out of the user-facing Service during the stage (a pod label
    the Service selects), which costs one roll of the candidate's pods when step 1 opens."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            ("double(self.minDecisionAgreement) <= 1.0",
             "rollout.shadow.minDecisionAgreement is a share between 0 and 1", ".minDecisionAgreement"),
            ("double(self.maxP99ScoreDifference) <= 1.0",
             "rollout.shadow.maxP99ScoreDifference is an absolute score difference between 0 and 1",
             ".maxP99ScoreDifference"),
            ("double(self.decisionThreshold) <= 1.0",
             "rollout.shadow.decisionThreshold is a score between 0 and 1", ".decisionThreshold"),
        ),
    )

    mirror_percent: Annotated[int, Field(
        ge=1, le=100, description="Percent of the stable's requests copied to the candidate.")] = 10
    duration_seconds: Annotated[int, Field(
        ge=30, le=7 * 86400, description="The stage lasts at least this long, whatever the numbers.")] = 600
    min_compared_requests: Annotated[int, Field(
        ge=1, le=100_000_000,
        description="Rows compared before any verdict: fewer is no verdict (no promotion), never a pass.")] = 500
    max_p99_score_difference: Annotated[str, Field(
        pattern=DECIMAL_PATTERN,
        description="Largest allowed p99 of |candidate score - stable score| over the stage.")] = "0.05"
    min_decision_agreement: Annotated[str, Field(
        pattern=DECIMAL_PATTERN,
        description="Smallest allowed share of rows whose decision (score >= decisionThreshold) agrees.")] = "0.95"
    max_score_psi: Annotated[str, Field(
        pattern=DECIMAL_PATTERN,
        description="Largest allowed PSI between the candidate's and the stable's score distributions.")] = "0.2"
    decision_threshold: Annotated[str, Field(
        pattern=DECIMAL_PATTERN, description="The model's decision threshold on its score.")] = "0.5"


def _default_steps() -> list[Step]:
    return [Step(set_weight=10, pause_seconds=300), Step(set_weight=50, pause_seconds=600),
            Step(set_weight=100, pause_seconds=0)]


class Rollout(_Model):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            ("self.steps.map(s, s.setWeight).isSorted() && "
             "self.steps.all(s, self.steps.exists_one(t, t.setWeight == s.setWeight))",
             "rollout.steps[*].setWeight must strictly increase", ".steps"),
        ),
    )

    steps: Annotated[list[Step], Field(min_length=1, max_length=20)] = Field(default_factory=_default_steps)
    traffic_routing: TrafficRouting = Field(default_factory=TrafficRouting)
    analysis: Analysis = Field(default_factory=Analysis)
    shadow: Shadow | None = Field(
        default=None, description="Optional shadow stage before the first step (issue 20); absent: none.")


class SLO(_Model):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            ("double(self.objective) > 0.0 && double(self.objective) < 100.0",
             "slo.objective is a percentage strictly between 0 and 100", ".objective"),
        ),
    )

    objective: Annotated[str, Field(pattern=DECIMAL_PATTERN, description='Availability target, e.g. "99.9".')] = "99.9"
    window_seconds: Annotated[int, Field(ge=3600, le=90 * 86400)] = 28 * 86400


class CriticalFeedback(_Model):
    threshold: Annotated[int, Field(ge=1, le=1000)] = 3
    window_seconds: Annotated[int, Field(ge=60, le=7 * 86400)] = 3600
    stakeholders: Annotated[
        list[Annotated[str, Field(pattern=ROLE_PATTERN)]],
        Field(min_length=1, max_length=16, json_schema_extra={"x-kubernetes-list-type": "set"}),
    ] = Field(default_factory=lambda: ["finance", "regulator"])


class FastBurn(_Model):
    enabled: bool = True
    factor: Annotated[str, Field(pattern=DECIMAL_PATTERN, description="Burn-rate multiple over 1h and 5m.")] = "14.4"


class Standby(_Model):
    """The prior approved version kept warm after a promotion, so that a rollback inside the window needs neither
    the artifact store nor a cold start. Its pods verify their bytes as every pod does and never receive user
    traffic until a rollback. Cost: ``replicas`` pods of the model's resources for ``durationSeconds`` after each
    promotion."""

    replicas: Annotated[int, Field(ge=0, le=100, description="Ready replicas of the prior approved version kept "
                                                              "after a promotion; 0 turns the standby off.")] = 1
    duration_seconds: Annotated[int, Field(ge=60, le=30 * 86400, description=(
        "How long after a promotion the standby is kept (a rollback in progress keeps it until it ends)."))] = 86400


class RollbackPolicy(_Model):
    error_budget_floor_percent: Annotated[
        str, Field(pattern=DECIMAL_PATTERN, description="Roll back when the budget stays below this percent.")
    ] = "5"
    sustain_seconds: Annotated[int, Field(ge=60, le=86400)] = 900
    critical_feedback: CriticalFeedback = Field(default_factory=CriticalFeedback)
    fast_burn: FastBurn = Field(default_factory=FastBurn)
    no_data_notify_seconds: Annotated[
        int, Field(ge=60, le=86400, description="Notify when metrics stay unavailable this long.")
    ] = 600
    resume_by_another_person: bool = Field(
        default=False, description="A resume after a rollback must come from someone who neither approved nor "
                                   "promoted the rolled-back version (the operator rejects it: SamePerson).")
    standby: Standby = Field(default_factory=Standby)


class Approvals(_Model):
    required_roles: Annotated[
        list[Annotated[str, Field(pattern=ROLE_PATTERN)]],
        Field(min_length=1, max_length=8, json_schema_extra={"x-kubernetes-list-type": "set"}),
    ] = Field(default_factory=lambda: ["finance", "regulatory"])


def _preserve_unknown_fields(schema: dict[str, Any]) -> None:
    """An opaque object the API server keeps as given (structural: no additionalProperties beside it)."""
    schema.pop("additionalProperties", None)
    schema.update({"type": "object", "x-kubernetes-preserve-unknown-fields": True})


class Retraining(_Model):
    """Scheduled, gated retraining (the operator schedules it: a CronJob cannot say "second Tuesday").

    At each window the gates are checked; only when all pass is a Job created from ``jobTemplate``. The Job
    only trains: the version it produces is an ordinary new version that needs the usual sign-offs.
    """

    model_config = ConfigDict(
        json_schema_extra=_validations(
            ("!self.enabled || has(self.jobTemplate)", "retraining.enabled needs a jobTemplate", ".jobTemplate"),
            ("double(self.featureAuditMin) <= 1.0", "retraining.featureAuditMin is a share between 0 and 1",
             ".featureAuditMin"),
            ("double(self.budgetMinCoveragePercent) <= 100.0",
             "retraining.budgetMinCoveragePercent is at most 100", ".budgetMinCoveragePercent"),
        ),
    )

    enabled: bool = Field(default=False, description="Opt in: retraining Jobs cost compute and need a jobTemplate.")
    schedule: Annotated[str, Field(
        max_length=128, pattern=SCHEDULE_PATTERN,
        description="Cron in UTC: minute hour day-of-month month day-of-week; day of week also takes D#N "
                    "(N-th weekday D) and DL (last weekday D), day of month L. Default: second Tuesday 02:00.",
    )] = "0 2 * * 2#2"
    reminder_lead_seconds: Annotated[int, Field(
        ge=0, le=30 * 86400, description="Event and notification this long before each window (0: none).")] = 86400
    starting_deadline_seconds: Annotated[int, Field(
        ge=60, le=7 * 86400,
        description="A window not acted on within this long (operator down) is recorded as missed, not run late.",
    )] = 3600
    min_new_labels: Annotated[int, Field(
        ge=0, le=1_000_000, description="Feedback labels needed since the previous window.")] = 25
    budget_floor_percent: Annotated[str, Field(
        pattern=DECIMAL_PATTERN, description="The model's error budget must stay above this over the window.")] = "15"
    budget_window_seconds: Annotated[int, Field(ge=3600, le=28 * 86400)] = 7 * 86400
    budget_min_coverage_percent: Annotated[str, Field(
        pattern=DECIMAL_PATTERN,
        description="Share of the window's 5-minute steps that must hold a budget sample: gappy history is not "
                    "eligible.")] = "99"
    feature_audit_min: Annotated[str, Field(pattern=DECIMAL_PATTERN)] = "0.95"
    feature_audit_uri: Annotated[str | None, Field(
        default=None, max_length=2048,
        description="The latest `modelwarden audit-features -o json` result (file:// or https://); its `share` "
                    "must reach featureAuditMin.")] = None
    job_template: dict[str, Any] | None = Field(
        default=None,
        description="A batch/v1 JobTemplateSpec ({metadata, spec}), as in a CronJob.",
        json_schema_extra=_preserve_unknown_fields,
    )


class MLModelSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            (FEEDBACK_STORE_RULE, FEEDBACK_STORE_MESSAGE, ".serving.feedbackStore.dsnSecretRef"),
        ),
    )

    enabled: bool = Field(
        default=True,
        description="The kill switch: false makes every replica answer the neutral prediction (DISABLED_CONFIG).")
    version: Annotated[str, Field(min_length=1, max_length=63, pattern=VERSION_PATTERN)]
    artifact: ArtifactRef
    feature_contract: FeatureContract
    serving: Serving = Field(default_factory=Serving)
    rollout: Rollout = Field(default_factory=Rollout)
    slo: SLO = Field(default_factory=SLO)
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)
    approvals: Approvals = Field(default_factory=Approvals)
    retraining: Retraining = Field(default_factory=Retraining)


# --- MLModel status -------------------------------------------------------------------------------------


class Condition(_Model):
    """metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class ApprovalRecord(_Model):
    role: str
    approver: str
    approved_at: str | None = None
    name: str | None = Field(default=None, description="The ModelApproval object.")


class ArtifactVersion(_Model):
    version: str
    sha256: str
    uri: str
    format: str = "skops"


class HistoryEntry(_Model):
    version: str
    sha256: str
    uri: str
    format: str = "skops"
    signer: str | None = Field(default=None, description="Key fingerprint of the verified artifact signature.")
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    deployed_at: str
    retired_at: str | None = None
    outcome: Literal["Serving", "Superseded", "RolledBack"] = "Serving"


class ErrorBudget(_Model):
    version: str
    remaining_percent: str = Field(description="Last observed error budget left, percent (may be negative).")
    observed_at: str


class TimelineEntry(_Model):
    at: str
    event: str
    message: str = ""


class Rollback(_Model):
    """One rollback (or canary abort), from the trigger to done. Its id names the incident everywhere."""

    id: str
    trigger: str
    message: str
    values: dict[str, str] = Field(default_factory=dict)
    request: str | None = Field(default=None,
                                 description="The ModelAction (uid[:version]) that asked for it, if manual.")
    from_version: str
    from_sha256: str
    to_version: str | None = None
    to_sha256: str | None = None
    started_at: str
    traffic_restored_at: str | None = None
    completed_at: str | None = None
    timeline: list[TimelineEntry] = Field(default_factory=list)
    accountable: list[str] = Field(
        default_factory=list, description="Who approved or promoted the rolled-back version (canary or stable): "
                                          "under resumeByAnotherPerson none of them may resume it.")


class Halt(_Model):
    id: str = Field(description="The halt `modelwarden resume MODEL` (a ModelAction, verb resume) clears.")
    reason: str
    version: str
    sha256: str
    since: str


class GateResult(_Model):
    name: str
    passed: bool
    message: str = ""


class ShadowStatus(_Model):
    """The shadow stage of the canary version: when it began, its last numbers and its verdict."""

    version: str
    started_at: str
    verdict: Literal["Running", "Passed", "Failed"] = "Running"
    finished_at: str | None = None
    values: dict[str, str] = Field(default_factory=dict, description="The last comparison read, as strings.")


class RetrainingJob(_Model):
    name: str
    window: str
    outcome: Literal["Running", "Succeeded", "Failed"] = "Running"
    created_at: str
    finished_at: str | None = None
    message: str = ""


class RetrainingStatus(_Model):
    schedule: str | None = Field(default=None, description="The schedule nextWindow was computed from.")
    next_window: str | None = None
    reminder_sent_for: str | None = Field(default=None, description="The window whose reminder went out.")
    last_window: str | None = None
    last_outcome: Literal["JobCreated", "GatesFailed", "Missed"] | None = None
    last_gates: list[GateResult] = Field(default_factory=list)
    last_job: RetrainingJob | None = None


class ActionOutcome(StrEnum):
    SUCCEEDED = "Succeeded"
    REJECTED = "Rejected"
    # not carried out within spec.ttlSeconds (the reason says what it waited for)
    EXPIRED = "Expired"


class HandledAction(_Model):
    """An action the operator acted on, written in the same status write as its effect (the commit point). It stays
    here only until the action's own status.outcome holds the result (which alone then says "done, forever")."""

    uid: str
    name: str
    verb: str
    requester: str
    version: str = Field(default="", description="The version the action concerned (promote: the canary).")
    outcome: ActionOutcome
    reason: str
    message: str = ""
    at: str


class LedgerHead(_Model):
    seq: int
    hash: Annotated[str, Field(pattern=SHA256_PATTERN)]
    at: str


class MLModelStatus(_Model):
    # The API server fills this in on every read until the operator first writes status: kstatus (Flux) calls
    # an object without status and conditions Current, so a new MLModel would look done before anyone
    # looked at it; observedGeneration 0 behind generation 1 says "in progress" instead.
    model_config = ConfigDict(json_schema_extra={"default": {"observedGeneration": 0}})

    observed_generation: int | None = None
    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    stable: ArtifactVersion | None = None
    canary: ArtifactVersion | None = None
    current_step_index: int | None = Field(
        default=None, description="Index into spec.rollout.steps; equal to its length while promoting.")
    canary_weight: int = 0
    step_started_at: str | None = None
    verified_sha256: str | None = Field(default=None, description="The last artifact sha256 the operator verified.")
    verified_signer: str | None = Field(
        default=None, description="Key fingerprint of the signature verified with verifiedSha256, when required.")
    verified_uri: str | None = Field(
        default=None, description="The model file URI whose directory's signature was verified, when required.")
    approvals: list[ApprovalRecord] = Field(default_factory=list, description="The quorum for the version in spec.")
    history: list[HistoryEntry] = Field(default_factory=list)
    error_budget: ErrorBudget | None = None
    metrics_unavailable_since: str | None = None
    metrics_unavailable_notified: bool = False
    halt: Halt | None = None
    last_rollback: Rollback | None = None
    incidents: list[Rollback] = Field(default_factory=list, description="The last few; full records elsewhere.")
    retraining: RetrainingStatus | None = None
    # issue 18: the decision ledger's head, and the ModelActions acted on (bounded; the exactly-once keys)
    ledger: LedgerHead | None = None
    handled_actions: list[HandledAction] = Field(default_factory=list)
    shadow: ShadowStatus | None = None


# --- ModelApproval ------------------------------------------------------------------------------------------


class ModelRef(_Model):
    name: Annotated[str, Field(min_length=1, max_length=253)]


class ModelApprovalSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_validations(("self == oldSelf", "a ModelApproval is immutable once created")),
    )

    model_ref: ModelRef
    version: Annotated[str, Field(min_length=1, max_length=63, pattern=VERSION_PATTERN)]
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)]
    role: Annotated[str, Field(pattern=ROLE_PATTERN)]
    approver: Annotated[str, Field(min_length=1, max_length=253, description="Must be the creating user's name.")]
    comment: Annotated[str, Field(max_length=4096)] = ""
    signer: Annotated[str | None, Field(
        default=None, pattern=SHA256_PATTERN,
        description="The artifact signature's signer (key fingerprint) this approval signs off, when the model "
                    "requires a signature (`modelwarden approve` fills it in). An approval counts only under the "
                    "signature requirement it was given for: with a signer, only while the model requires a "
                    "signature and it verified by that signer; without one, only while none is required.")]


# --- ModelAction (issue 18) ---------------------------------------------------------------------------------

ACTION_PLURAL = "modelactions"
LEDGER_PLURAL = "modelledgers"
TRUST_PLURAL = "trustpolicies"
# The one TrustPolicy the operator and `ledger verify` read (cluster-scoped: no model namespace can edit it).
TRUST_POLICY_NAME = "cluster"
# The ledger checkpoint of a model: a cluster-scoped object named by the model's uid.
CHECKPOINT_PLURAL = "modelledgercheckpoints"
ActionVerb = Literal["promote", "rollback", "resume", "enable"]


class ModelActionSpec(_Model):
    """A human's request to act on a model. Who asked is proven by the API server (the ValidatingAdmissionPolicy in
    manifests/admission/modelwarden-action-policy.yaml: requester is the requesting user, the verb is one the user's
    groups may ask for, immutable once created)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            ("self == oldSelf", "a ModelAction is immutable once created"),
            ("!has(self.to) || self.verb == 'rollback'", "only a rollback names a target version", ".to"),
        ),
    )

    model_ref: ModelRef
    verb: ActionVerb
    requester: Annotated[str, Field(min_length=1, max_length=253, description="Must be the creating user's name.")]
    to: Annotated[str | None, Field(
        default=None, max_length=63, pattern=VERSION_PATTERN,
        description="rollback only: the version in history to go back to (default: the previous approved one).")]
    reason: Annotated[str, Field(max_length=4096, description="Why; goes into the decision ledger.")] = ""
    model_uid: Annotated[str | None, Field(
        default=None, max_length=64,
        description="The uid of the MLModel the action is for (the CLI fills it in): a model re-created under the "
                    "same name does not act on it. Unset: an action older than the model is not acted on.")]
    ttl_seconds: Annotated[int, Field(
        ge=10, le=7 * 24 * 3600,
        description="Not carried out within this many seconds of its creation: it ends Expired.")] = 3600


class ActionReason(StrEnum):
    """Why a ModelAction ended as it did (its status and the ledger say the same)."""

    APPLIED = "Applied"
    NO_CANARY_WAITING = "NoCanaryWaiting"
    NOT_AT_MANUAL_PAUSE = "NotAtManualPause"
    NOTHING_SERVED = "NothingServed"
    NOT_IN_HISTORY = "NotInHistory"
    NOT_HALTED = "NotHalted"
    SAME_PERSON = "SamePerson"
    SERVERS_UNREACHABLE = "ServersUnreachable"
    NOT_DISABLED_BY_GOVERNANCE = "NotDisabledByGovernance"
    # issue 27
    MODEL_RECREATED = "ModelRecreated"
    TARGET_NOT_APPROVED = "TargetNotApproved"
    TARGET_ROLLED_BACK = "TargetRolledBack"
    TARGET_SHA256_MISMATCH = "TargetSha256Mismatch"
    TIME_TO_LIVE_EXCEEDED = "TimeToLiveExceeded"


class ModelActionStatus(_Model):
    outcome: ActionOutcome | None = Field(default=None, description="Set once: an action with an outcome is never "
                                                                   "acted on again.")
    reason: str = ""
    message: str = ""
    handled_at: str | None = None
    model_generation: int | None = Field(default=None, description="The MLModel generation the action was applied to.")
    ledger_seq: int | None = Field(default=None, description="The decision ledger record that holds the outcome.")
    version: str = Field(default="", description="The version the action concerned (promote: the canary released).")


# --- ModelLedger (issue 18) ---------------------------------------------------------------------------------


class LedgerRecord(_Model):
    """One decision. ``hash`` is the sha256 of the record's canonical JSON without ``hash`` and ``signature``
    (so it covers ``prev``, the previous record's hash); ``signature`` is the operator's Ed25519 signature of
    ``hash``."""

    seq: Annotated[int, Field(ge=0)]
    time: str
    actor: Annotated[str, Field(description="'operator' or 'user:<name>' (proven by the API server); "
                                            "'unknown:annotation' in records from before the annotations' removal.")]
    model: str
    model_uid: str
    version: str = ""
    sha256: str = ""
    generation: int = 0
    decision: Annotated[str, Field(description="What was decided: a CamelCase reason.")]
    outcome: str = ""
    inputs: dict[str, str] = Field(default_factory=dict)
    key: Annotated[str, Field(description="Idempotency key: the same decision retried is recorded once.")]
    recorded_after_acting: bool = Field(
        default=False, description="True for a rollback: traffic moved first, this record followed.")
    prev: str
    hash: str
    key_id: str = ""
    signature: str = ""


class LedgerCheckpoint(_Model):
    """The head of one model's ledger as the operator last wrote it (issue 27), kept **outside the model's
    namespace**: a cluster-scoped ModelLedgerCheckpoint named by the model's uid, which only the operator may write
    (cluster-admin aside), so whoever may delete or rewrite the model's ModelLedger segments cannot also move it.
    ``expiredThrough``: the newest record the operator deleted by retention (its time in ``expiredNewest``), so a
    missing oldest segment is "expired" only when the operator says so and the dates agree."""

    namespace: str
    model: str
    model_uid: str
    seq: int
    hash: str
    at: str
    key_id: str = ""
    retention_days: int = 400
    expired_through: int | None = None
    expired_newest: str | None = None


class ModelLedgerSpec(_Model):
    """One segment of a model's decision ledger. Not owned by the MLModel: it outlives it, until retention."""

    model_ref: ModelRef
    model_uid: str
    segment: Annotated[int, Field(ge=0)]
    records: Annotated[list[LedgerRecord], Field(max_length=64)] = Field(default_factory=list)


# --- TrustPolicy (issue 27): the cluster's trust roots, cluster-scoped ----------------------------------------


class LedgerKey(_Model):
    """An operator key trusted to sign ledger records made within its validity window (RFC 3339 times)."""

    key_id: Annotated[str, Field(pattern=r"^[a-f0-9]{16}$", description="First 16 hex of sha256(raw public key).")]
    public_key: Annotated[str, Field(min_length=1, max_length=4096, description="PEM, Ed25519.")]
    not_before: Annotated[str, Field(description="Records made before this are not trusted under this key.")]
    not_after: Annotated[str | None, Field(
        default=None, description="Retired from then on: records made after it are not trusted, and an operator "
                                  "holding this key signs nothing new.")]


class ArtifactKey(_Model):
    name: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
    public_key: Annotated[str, Field(min_length=1, max_length=4096, description="PEM (P-256/384/521).")]


class TrustPolicySpec(_Model):
    """What the cluster trusts. Only cluster administrators may write it (no shipped role grants write; the
    operator reads it). A model's namespace may only narrow it: ``spec.artifact.signature`` requires a signature
    and its ConfigMap can only remove keys from ``artifactKeys``, never add one."""

    ledger_keys: list[LedgerKey] = Field(default_factory=list, description="Keys `ledger verify` trusts.")
    artifact_keys: list[ArtifactKey] = Field(
        default_factory=list, description="Keys trusted to sign model artifacts, for every namespace.")
