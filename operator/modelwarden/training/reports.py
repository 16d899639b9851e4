"""The report files of an artifact directory and their schemas (what ``verify-artifacts`` checks).

Reports are written canonically (sorted keys, two-space indent, trailing newline; floats rounded to 10
decimals) so the same training run always gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

REPRODUCIBILITY_REPORT: Final = "reproducibility-report.json"
BIAS_REPORT: Final = "bias-report.json"
EVALUATION_REPORT: Final = "evaluation-report.json"
REPORT_FILES: Final = (REPRODUCIBILITY_REPORT, BIAS_REPORT, EVALUATION_REPORT)

Status = Literal["pass", "fail"]


class _Report(BaseModel):
    # Unknown keys are allowed (newer writers may add some); the ones named here are required and typed.
    model_config = ConfigDict(frozen=True, extra="allow")


class DataSnapshot(_Report):
    source: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int = Field(ge=1)
    columns: list[str]


class FeatureStore(_Report):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    contract: str
    features: list[str]
    ref: str | None = None


class ReproducibilityReport(_Report):
    schema_: Literal["modelwarden.io/reproducibility-report/v1"] = Field(alias="schema")
    model: str
    version: str
    seed: int
    trained_at: AwareDatetime
    config_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    pipeline_commit: str = Field(min_length=1)
    data: DataSnapshot
    feature_store: FeatureStore
    libraries: dict[str, str]


class GroupMetrics(_Report):
    n: int = Field(ge=0)
    base_rate: float | None
    selection_rate: float | None
    tpr: float | None
    fpr: float | None


class BiasReport(_Report):
    schema_: Literal["modelwarden.io/bias-report/v1"] = Field(alias="schema")
    status: Status
    protected_attribute: str
    evaluated_on: str
    thresholds: dict[str, float]
    groups: dict[str, GroupMetrics] = Field(min_length=1)
    demographic_parity_difference: float
    demographic_parity_ratio: float
    equalized_odds_difference: float
    min_group_size: int
    failures: list[str]


class EvaluationReport(_Report):
    schema_: Literal["modelwarden.io/evaluation-report/v1"] = Field(alias="schema")
    status: Status
    task: Literal["classifier", "signal"]
    estimator: str
    metrics: dict[str, float | int | None]
    acceptance: dict[str, float | None]
    failures: list[str]
    backtest: dict[str, float | int] | None = None


SCHEMAS: Final[dict[str, type[_Report]]] = {
    REPRODUCIBILITY_REPORT: ReproducibilityReport,
    BIAS_REPORT: BiasReport,
    EVALUATION_REPORT: EvaluationReport,
}


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 10) + 0.0  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    return value


def canonical_json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(_round(doc), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def write_report(directory: Path, name: str, doc: dict[str, Any]) -> None:
    SCHEMAS[name].model_validate(doc)  # never write a report our own checker would refuse
    (directory / name).write_bytes(canonical_json(doc))
