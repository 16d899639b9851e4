"""``model_meta.json``: what a model expects (ordered features) and what its training data looked like.

The training reference distributions are what the server measures drift against: per feature, and for the
prediction score, a histogram as bin edges and the proportion of training rows in each bin.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

MODEL_META_FILENAME = "model_meta.json"

# Empty bins would make PSI infinite; the customary floor keeps one empty bin a large but finite signal.
PSI_EPSILON = 1e-4


class ReferenceDistribution(BaseModel):
    """A histogram of training values: ``len(bin_edges) == len(proportions) + 1``.

    Values below the first edge count in the first bin and values above the last edge in the last bin, so
    the reference covers the whole real line.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bin_edges: tuple[float, ...] = Field(min_length=2)
    proportions: tuple[float, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ReferenceDistribution:
        edges, props = self.bin_edges, self.proportions
        if len(edges) != len(props) + 1:
            raise ValueError(f"{len(edges)} bin edges need {len(edges) - 1} proportions, got {len(props)}")
        if not all(math.isfinite(e) for e in edges):
            raise ValueError("bin edges must be finite")
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError("bin edges must be strictly increasing")
        if any(not math.isfinite(p) or p < 0 for p in props):
            raise ValueError("proportions must be finite and >= 0")
        if not math.isclose(sum(props), 1.0, abs_tol=1e-6):
            raise ValueError(f"proportions must sum to 1, got {sum(props)}")
        return self

    @property
    def n_bins(self) -> int:
        return len(self.proportions)

    def bin_of(self, value: float) -> int:
        """The index of the bin ``value`` falls in (outer bins are open-ended)."""
        return bisect.bisect_right(self.bin_edges, value, 1, len(self.bin_edges) - 1) - 1

    def proportions_of(self, values: Sequence[float]) -> list[float]:
        """The share of ``values`` in each bin (all zeros for no values)."""
        return _bin_shares(self.bin_edges, values)

    @classmethod
    def from_sample(cls, values: Sequence[float], bins: int = 10) -> ReferenceDistribution:
        """Quantile bins of a training sample (ties merged, so a constant feature gets one bin)."""
        finite = sorted(v for v in values if math.isfinite(v))
        if not finite:
            raise ValueError("a reference distribution needs at least one finite value")
        if bins < 1:
            raise ValueError("bins must be >= 1")
        n = len(finite)
        edges = [finite[0]]
        for i in range(1, bins):
            cut = finite[(i * n) // bins]
            if cut > edges[-1]:
                edges.append(cut)
        if finite[-1] > edges[-1]:
            edges.append(finite[-1])
        if len(edges) == 1:  # a constant sample: one bin around its value
            edges = [edges[0] - 0.5, edges[0] + 0.5]
        return cls(bin_edges=tuple(edges), proportions=tuple(_bin_shares(edges, finite)))


def _bin_shares(edges: Sequence[float], values: Sequence[float]) -> list[float]:
    counts = [0] * (len(edges) - 1)
    for v in values:
        counts[bisect.bisect_right(edges, v, 1, len(edges) - 1) - 1] += 1
    total = len(values)
    return [c / total if total else 0.0 for c in counts]


def psi(expected: Sequence[float], actual: Sequence[float], epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of ``actual`` bin proportions against ``expected`` ones.

    Rules of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift.
    """
    if len(expected) != len(actual):
        raise ValueError(f"PSI needs the same bins: {len(expected)} expected vs {len(actual)} actual")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, epsilon), max(a, epsilon)
        total += (a - e) * math.log(a / e)
    return total


class DriftReference(BaseModel):
    """Training distributions: one per feature (by name) and, optionally, one for the prediction score."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: dict[str, ReferenceDistribution] = Field(default_factory=dict)
    prediction: ReferenceDistribution | None = None


class ModelMeta(BaseModel):
    """The content of ``model_meta.json``. Unknown keys are kept: the training pipeline may add its own."""

    model_config = ConfigDict(frozen=True, extra="allow")

    features: tuple[str, ...] = Field(min_length=1)
    n_features: int = Field(ge=1)
    trained_at: AwareDatetime
    feature_contract: str | None = None
    reference: DriftReference = Field(default_factory=DriftReference)

    @model_validator(mode="after")
    def _consistent(self) -> ModelMeta:
        if self.n_features != len(self.features):
            raise ValueError(f"n_features is {self.n_features} but {len(self.features)} features are listed")
        if len(set(self.features)) != len(self.features):
            raise ValueError("feature names must be unique")
        unknown = sorted(set(self.reference.features) - set(self.features))
        if unknown:
            raise ValueError(f"reference distributions for features the model does not have: {unknown}")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True) + "\n"

    @classmethod
    def build(cls, features: Sequence[str], trained_at: datetime, *, feature_contract: str | None = None,
              feature_samples: Sequence[Sequence[float]] | None = None,
              prediction_sample: Sequence[float] | None = None, bins: int = 10) -> ModelMeta:
        """Meta for ``features``; with samples (rows in feature order, and scores), drift references too."""
        ref_features: dict[str, ReferenceDistribution] = {}
        if feature_samples is not None:
            columns = list(zip(*feature_samples, strict=True)) if feature_samples else []
            if len(columns) != len(features):
                raise ValueError(f"feature samples have {len(columns)} columns, expected {len(features)}")
            ref_features = {name: ReferenceDistribution.from_sample(col, bins) for name, col in zip(
                features, columns, strict=True)}
        prediction = ReferenceDistribution.from_sample(prediction_sample, bins) if prediction_sample else None
        return cls(features=tuple(features), n_features=len(features), trained_at=trained_at,
                   feature_contract=feature_contract,
                   reference=DriftReference(features=ref_features, prediction=prediction))


def read_model_meta(directory: str | Path) -> ModelMeta:
    """Parse ``DIR/model_meta.json`` (raises ``OSError`` or ``pydantic.ValidationError``)."""
    return ModelMeta.model_validate_json((Path(directory) / MODEL_META_FILENAME).read_bytes())
