"""Request and response shapes of the HTTP API, and the OpenAPI document built from them.

``FeedbackIn`` and ``ReenableIn`` validate requests. The prediction bodies are validated by hand on the hot
path (see ``app.py``); their models here document exactly what that code accepts and answers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from model_server.metrics import SEVERITIES, STAKEHOLDERS
from modelwarden.artifacts import FeatureContract

Severity = Literal["info", "minor", "major", "critical"]
Stakeholder = Literal["finance", "regulator", "risk", "operations", "customer", "other"]
if get_args(Severity) != SEVERITIES or get_args(Stakeholder) != STAKEHOLDERS:  # metrics pre-create these label sets
    raise ImportError("schemas.Severity/Stakeholder disagree with metrics.SEVERITIES/STAKEHOLDERS")

PREDICTION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class FeedbackIn(_Model):
    """A human's label on one prediction."""

    prediction_id: str = Field(alias="predictionId", pattern=PREDICTION_ID_PATTERN)
    label: StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=1000)] = Field(
        description="the correct outcome or a verdict, as a JSON scalar")
    severity: Severity
    stakeholder: Stakeholder
    comment: str | None = Field(default=None, max_length=4000)
    author: str | None = Field(default=None, max_length=256)


class ReenableIn(_Model):
    """Who lifts DISABLED_BY_GOVERNANCE, and why (both are logged)."""

    actor: str = Field(min_length=1, max_length=256)
    reason: str = Field(min_length=1, max_length=2000)


class FaultsIn(_Model):
    """Chaos testing: answer this share of scored requests with an injected 500 (counted as outcome error, not
    as a model error, so governance does not switch the model off). 0 turns it off."""

    error_ratio: float = Field(alias="errorRatio", ge=0.0, le=1.0)
    actor: str = Field(min_length=1, max_length=256)
    reason: str = Field(min_length=1, max_length=2000)


FEEDBACK_DURABILITY = """The durability contract (README "Feedback durability"):

* The store is one per model, shared by every replica of every version (PostgreSQL in a cluster), and outlives the
  pods. A label posted to any replica finds a prediction made by any other, or by an earlier version.
* A prediction becomes feedback-able once its record is written: every `RECORD_FLUSH_SECONDS` (0.25 s) by the
  replica that answered, at once when that replica receives any feedback, and on a graceful stop. A label for a
  prediction not written yet waits up to `FEEDBACK_JOIN_WAIT_SECONDS` (2 s) for it instead of answering 404.
  A server killed (`kill -9`, OOM) before writing loses those records: their labels answer 404
  `UNKNOWN_PREDICTION`. Nothing is accepted without its prediction.
* `201` means the label is committed to the store (fsynced): it survives the server, its pod and a rollback.
  Retries answer `200` with the same `feedbackId` (one label per prediction and stakeholder); `503
  STORE_UNAVAILABLE` means nothing was stored - retry.
* Retention: labels `FEEDBACK_RETENTION_SECONDS` (365 days), predictions with labels as long as their labels,
  others `PREDICTION_RETENTION_SECONDS` (30 days). Export: `python -m model_server.export --model NAME`."""


class FeedbackCreated(_Model):
    """201 for a new label; 200 with ``duplicate: true`` when this stakeholder's same label on this prediction
    was stored before (a retry): one label per prediction and stakeholder, ``feedbackId`` derived from both."""

    feedback_id: str = Field(alias="feedbackId")
    prediction_id: str = Field(alias="predictionId")
    model: str
    version: str
    received_at: str = Field(alias="receivedAt")
    duplicate: bool | None = None


class PredictionView(_Model):
    model: str
    version: str
    track: str
    sha256: str = Field(default="", description="the model file that answered (empty for records from before it "
                                                "was kept)")
    state: str
    features: dict[str, Any]
    prediction: float
    created_at: str = Field(alias="createdAt")


class FeedbackItem(_Model):
    feedback_id: str = Field(alias="feedbackId")
    label: bool | int | float | str
    severity: str
    stakeholder: str
    comment: str | None = None
    author: str | None = None
    version: str = Field(description="the version that made the labelled prediction")
    track: str = ""
    sha256: str = ""
    received_at: str = Field(alias="receivedAt")


class FeedbackView(_Model):
    prediction_id: str = Field(alias="predictionId")
    prediction: PredictionView | None
    feedback: list[FeedbackItem]


class PredictRequest(_Model):
    """Exactly one of ``features`` (one row) or ``instances`` (a batch), keyed by feature name."""

    features: dict[str, float] | None = None
    instances: list[dict[str, float]] | None = Field(default=None, min_length=1)


class PredictionItem(_Model):
    prediction_id: str = Field(alias="predictionId")
    prediction: float


class PredictResponse(_Model):
    model: str
    version: str
    track: str
    state: str
    neutral: bool = Field(description="true when the neutral prediction was answered instead of the model's")
    prediction_id: str | None = Field(default=None, alias="predictionId", description="single-row requests")
    prediction: float | None = Field(default=None, description="single-row requests")
    predictions: list[PredictionItem] | None = Field(default=None, description="batch requests")


class ErrorBody(BaseModel):
    """Outside ``/v2``: ``error`` is a stable code. Under ``/v2`` (Open Inference Protocol) ``error`` is the text
    and the code is in ``code``, so OIP clients show their users what went wrong."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="a stable code (MALFORMED_JSON, INVALID_INPUT, FEATURE_MISMATCH, ...); "
                                   "under /v2 the message")
    code: str | None = Field(default=None, description="under /v2: the stable code")
    message: str | None = None


class FeatureMismatchBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    error: Literal["FEATURE_MISMATCH"]
    contract: str
    expected_count: int
    provided_count: int
    missing_features: list[str]
    unexpected_features: list[str]
    row: int | None = Field(default=None, description="index of the offending instance in a batch")


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = Field(default=None, description="absent when parameters.binary_data_size is set")
    parameters: dict[str, Any] | None = Field(default=None, description="binary_data_size: this tensor's bytes "
                                                                        "after the JSON header (binary extension)")


class RequestedOutput(BaseModel):
    name: Literal["prediction", "prediction_id"]
    parameters: dict[str, Any] | None = Field(default=None, description="binary_data: answer this one as bytes")


class InferRequest(BaseModel):
    """OIP v2. Either one tensor per feature, named by feature (shape [N] or [N,1]), checked by name; or one
    tensor of shape [N, n_features] in contract order. With the binary tensor data extension the body is this
    JSON (its length in the ``Inference-Header-Content-Length`` header) followed by the tensors' bytes."""

    id: str | None = None
    inputs: list[InferTensor]
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="binary_data_output: every output as bytes")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[InferTensor] = Field(description="`prediction` (FP64 [N]) and `prediction_id` (BYTES [N])")
    parameters: dict[str, Any] | None = None


_COMPONENTS: list[type[BaseModel]] = [
    FeedbackIn, ReenableIn, FeedbackCreated, FeedbackView, PredictRequest, PredictResponse, ErrorBody,
    FeatureMismatchBody, InferRequest, InferResponse,
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel] | dict[str, Any], description: str) -> dict[str, Any]:
    schema = _ref(model) if isinstance(model, type) else model
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document(*, title: str, version: str, contract: FeatureContract | None) -> dict[str, Any]:
    """OpenAPI 3.1 of the HTTP API; with a known contract, the feature names are spelled out."""
    schemas: dict[str, Any] = {}
    for model in _COMPONENTS:
        schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    if contract is not None:
        row = {"type": "object", "additionalProperties": False, "required": list(contract.features),
               "properties": {f: {"type": "number"} for f in contract.features},
               "description": f"features of contract {contract.name!r}, keyed by name"}
        schemas["PredictRequest"]["properties"]["features"] = row
        schemas["PredictRequest"]["properties"]["instances"] = {"type": "array", "minItems": 1, "items": row}
    error = _json(ErrorBody, "error")
    mismatch = _json(FeatureMismatchBody, "FEATURE_MISMATCH or INVALID_INPUT")
    mismatch["content"]["application/json"]["schema"] = {"oneOf": [_ref(FeatureMismatchBody), _ref(ErrorBody)]}
    bearer: list[dict[str, list[str]]] = [{"adminToken": []}]
    simple = {"type": "object"}

    def model_paths(prefix: str) -> dict[str, Any]:
        params = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
        if "{version}" in prefix:
            params.append({"name": "version", "in": "path", "required": True, "schema": {"type": "string"}})
        return {
            prefix: {"get": {"summary": "Model metadata (OIP)", "parameters": params,
                             "responses": {"200": _json(simple, "metadata"), "404": error}}},
            f"{prefix}/ready": {"get": {"summary": "Model readiness (OIP)", "parameters": params,
                                        "responses": {"200": _json(simple, "ready"), "503": error}}},
            f"{prefix}/infer": {"post": {
                "summary": "Inference (OIP v2)", "parameters": params,
                "requestBody": {"required": True, **_json(InferRequest, "OIP inference request")},
                "responses": {"200": _json(InferResponse, "scores"), "400": error, "404": error,
                              "413": error, "422": mismatch, "503": error}}},
        }

    paths: dict[str, Any] = {
        "/v2": {"get": {"summary": "Server metadata (OIP)", "responses": {"200": _json(simple, "metadata")}}},
        "/v2/health/live": {"get": {"summary": "Liveness (OIP)", "responses": {"200": _json(simple, "live")}}},
        "/v2/health/ready": {"get": {"summary": "Readiness: model verified, loaded and warmed (OIP)",
                                     "responses": {"200": _json(simple, "ready"), "503": _json(simple, "not ready")}}},
        **model_paths("/v2/models/{name}"),
        **model_paths("/v2/models/{name}/versions/{version}"),
        "/predict": {"post": {
            "summary": "Score one row or a batch, features keyed by name",
            "requestBody": {"required": True, **_json(PredictRequest, "features or instances")},
            "responses": {"200": _json(PredictResponse, "scores"), "400": error, "413": error, "422": mismatch,
                          "503": error}}},
        "/feedback": {"post": {
            "summary": "Record a human feedback label; 201 only once it is durable",
            "description": FEEDBACK_DURABILITY,
            "requestBody": {"required": True, **_json(FeedbackIn, "feedback")},
            "responses": {"201": _json(FeedbackCreated, "stored"), "200": _json(FeedbackCreated, "already stored"),
                          "400": error, "404": error, "409": error, "413": error, "422": error, "503": error}}},
        "/feedback/{predictionId}": {"get": {
            "summary": "A prediction and its feedback labels",
            "description": "Read from the model's feedback store: the same answer on every replica of every "
                           "version, and after every pod that made or labelled the prediction is gone.",
            "parameters": [{"name": "predictionId", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json(FeedbackView, "prediction and labels"), "404": error, "503": error}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/status": {"get": {"summary": "Governance state, load status, version",
                            "responses": {"200": _json(simple, "status")}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json(simple, "OpenAPI")}}},
        "/admin/flush": {"post": {"summary": "Drain the inference queue and flush prediction records",
                                  "security": bearer, "responses": {"200": _json(simple, "flushed"),
                                                                    "401": error, "403": error}}},
        "/admin/warmup": {"post": {"summary": "Warm the loaded model's caches", "security": bearer,
                                   "responses": {"200": _json(simple, "warmed"), "401": error, "403": error,
                                                 "409": error}}},
        "/admin/reenable": {"post": {
            "summary": "Lift DISABLED_BY_GOVERNANCE (a human decision)", "security": bearer,
            "requestBody": {"required": True, **_json(ReenableIn, "who and why")},
            "responses": {"200": _json(simple, "re-enabled"), "401": error, "403": error, "409": error,
                          "422": error}}},
        "/admin/faults": {"post": {
            "summary": "Inject errors into a share of requests (chaos testing of rollbacks)", "security": bearer,
            "requestBody": {"required": True, **_json(FaultsIn, "error ratio, who and why")},
            "responses": {"200": _json(simple, "set"), "401": error, "403": error, "422": error}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}}},
    }
