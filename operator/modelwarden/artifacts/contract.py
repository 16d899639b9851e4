"""The feature contract: a named, ordered list of feature names a model was trained on.

Callers send features keyed by name; :meth:`FeatureContract.reorder` puts them in contract order or says
exactly what is wrong (the runbooks' ``FEATURE_MISMATCH`` with expected/provided counts and the missing and
unexpected names).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

FEATURE_MISMATCH = "FEATURE_MISMATCH"


class FeatureMismatch(ValueError):
    """Features offered do not match the contract: some are missing, some are not part of it, or both."""

    def __init__(self, *, contract: str, expected_count: int, provided_count: int,
                 missing_features: Sequence[str], unexpected_features: Sequence[str]) -> None:
        self.contract = contract
        self.expected_count = expected_count
        self.provided_count = provided_count
        self.missing_features = list(missing_features)
        self.unexpected_features = list(unexpected_features)
        super().__init__(
            f"{FEATURE_MISMATCH}: contract {contract!r} expects {expected_count} features, got {provided_count}"
            f" (missing {self.missing_features}, unexpected {self.unexpected_features})")

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the server answers with and the logs carry."""
        return {
            "error": FEATURE_MISMATCH,
            "contract": self.contract,
            "expected_count": self.expected_count,
            "provided_count": self.provided_count,
            "missing_features": self.missing_features,
            "unexpected_features": self.unexpected_features,
        }


class FeatureContract(BaseModel):
    """A contract name and its ordered, unique feature names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    features: tuple[str, ...] = Field(min_length=1)

    @field_validator("features")
    @classmethod
    def _unique_non_empty(cls, features: tuple[str, ...]) -> tuple[str, ...]:
        if any(not f for f in features):
            raise ValueError("feature names must be non-empty")
        duplicates = sorted(name for name, count in Counter(features).items() if count > 1)
        if duplicates:
            raise ValueError(f"duplicate feature names: {duplicates}")
        return features

    @property
    def n_features(self) -> int:
        return len(self.features)

    def reorder(self, payload: Mapping[str, float]) -> list[float]:
        """Values of ``payload`` in contract order; :class:`FeatureMismatch` unless the names match exactly."""
        features = self.features
        try:
            values = [payload[name] for name in features]
        except KeyError:
            values = None
        if values is not None and len(payload) == len(features):
            return values
        raise self.mismatch(payload.keys())

    def mismatch(self, provided: Sequence[str] | Any) -> FeatureMismatch:
        """The :class:`FeatureMismatch` describing ``provided`` names against this contract."""
        provided = list(provided)
        expected = set(self.features)
        offered = set(provided)
        return FeatureMismatch(
            contract=self.name,
            expected_count=len(self.features),
            provided_count=len(provided),
            missing_features=[f for f in self.features if f not in offered],
            unexpected_features=[f for f in provided if f not in expected],
        )
