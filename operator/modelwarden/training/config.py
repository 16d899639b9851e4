"""The training config (YAML): what to train on, which estimator, the seed, and the gates' thresholds.

Relative data paths are resolved against the config file's directory. Unknown keys are errors: a typo in a
threshold must not silently fall back to its default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelwarden.artifacts.manifest import ModelFormat
from modelwarden.training.card import CardStatement

Task = Literal["classifier", "signal"]
EstimatorKind = Literal["logistic", "gradient_boosting"]
SyntheticKind = Literal["credit", "signal"]


class ConfigError(ValueError):
    """The config cannot be read or is invalid (a usage error: exit code 2)."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SyntheticData(_Strict):
    kind: SyntheticKind = "credit"
    rows: int = Field(default=4000, ge=100, le=2_000_000)


class DataConfig(_Strict):
    """Either ``synthetic`` (generated here, deterministic for the seed) or ``path`` (CSV or Parquet)."""

    synthetic: SyntheticData | None = None
    path: Path | None = None
    label: str = "label"
    protected_attribute: str = "group"
    entity_column: str | None = "entity_id"
    time_column: str | None = None
    return_column: str | None = None
    features: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.synthetic is None) == (self.path is None):
            raise ValueError("give exactly one of data.synthetic and data.path")
        return self


class EstimatorConfig(_Strict):
    kind: EstimatorKind = "logistic"
    params: dict[str, Any] = Field(default_factory=dict)


class SplitConfig(_Strict):
    test_fraction: float = Field(default=0.3, gt=0, lt=1)


class BiasThresholds(_Strict):
    decision_threshold: float = Field(default=0.5, ge=0, le=1)
    max_demographic_parity_difference: float = Field(default=0.1, ge=0, le=1)
    min_demographic_parity_ratio: float = Field(default=0.8, ge=0, le=1)
    max_equalized_odds_difference: float = Field(default=0.1, ge=0, le=1)
    min_group_size: int = Field(default=30, ge=1)


class AcceptanceConfig(_Strict):
    min_auc: float | None = Field(default=0.6, ge=0, le=1)
    min_sharpe: float | None = None
    max_drawdown: float | None = Field(default=None, ge=0, le=1)


class TrainingConfig(_Strict):
    model: str = Field(min_length=1, max_length=253)
    version: str = Field(min_length=1, max_length=128)
    task: Task = "classifier"
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    trained_at: AwareDatetime | None = None
    feature_contract: str | None = None
    pipeline_commit: str | None = None
    feature_store_ref: str | None = None
    data: DataConfig
    estimator: EstimatorConfig = Field(default_factory=EstimatorConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    bias: BiasThresholds = Field(default_factory=BiasThresholds)
    acceptance: AcceptanceConfig = Field(default_factory=AcceptanceConfig)
    formats: tuple[ModelFormat, ...] = ("skops", "onnx")
    # The model card's intended use, out-of-scope uses and limitations, in the owners' words.
    card: CardStatement = Field(default_factory=CardStatement)

    @model_validator(mode="after")
    def _formats(self) -> TrainingConfig:
        if not self.formats or len(set(self.formats)) != len(self.formats):
            raise ValueError("formats must be a non-empty list without repeats")
        if "joblib" in self.formats:
            raise ValueError("joblib artifacts are pickles; the training pipeline writes skops and onnx only")
        return self

    @property
    def contract_name(self) -> str:
        return self.feature_contract or f"{self.model}-v1"


def load_config(path: str | Path) -> TrainingConfig:
    """Read and validate a YAML config; data paths become absolute (relative to the config's directory)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping")
    try:
        config = TrainingConfig.model_validate(raw)
    except ValidationError as e:
        details = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"config {path} is invalid: {details}") from e
    if config.data.path is not None and not config.data.path.is_absolute():
        data = config.data.model_copy(update={"path": (path.parent / config.data.path).resolve()})
        config = config.model_copy(update={"data": data})
    return config
