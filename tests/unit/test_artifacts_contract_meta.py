"""The feature contract (reorder by name, FEATURE_MISMATCH details) and model_meta.json with its drift
reference distributions."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from modelwarden.artifacts import FeatureContract, FeatureMismatch, ModelMeta, ReferenceDistribution, psi

CONTRACT = FeatureContract(name="ml_v1", features=("rsi", "macd", "volume"))


def test_reorder_puts_values_in_contract_order() -> None:
    assert CONTRACT.reorder({"volume": 3.0, "rsi": 1.0, "macd": 2.0}) == [1.0, 2.0, 3.0]
    assert CONTRACT.n_features == 3


def test_mismatch_names_what_is_missing_and_unexpected() -> None:
    with pytest.raises(FeatureMismatch) as caught:
        CONTRACT.reorder({"volume": 3.0, "rsi": 1.0, "macd_v2": 2.0, "beta": 0.1})
    e = caught.value
    assert (e.expected_count, e.provided_count) == (3, 4)
    assert e.missing_features == ["macd"]
    assert e.unexpected_features == ["macd_v2", "beta"]
    assert e.to_dict() == {"error": "FEATURE_MISMATCH", "contract": "ml_v1", "expected_count": 3,
                           "provided_count": 4, "missing_features": ["macd"],
                           "unexpected_features": ["macd_v2", "beta"]}
    assert "FEATURE_MISMATCH" in str(e)


def test_extra_feature_alone_is_a_mismatch() -> None:
    with pytest.raises(FeatureMismatch) as caught:
        CONTRACT.reorder({"volume": 3.0, "rsi": 1.0, "macd": 2.0, "extra": 0.0})
    assert caught.value.missing_features == []
    assert caught.value.unexpected_features == ["extra"]


@pytest.mark.parametrize("features", [(), ("a", "a"), ("a", "")])
def test_contract_features_are_unique_and_non_empty(features: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError):
        FeatureContract(name="c", features=features)


def test_reference_from_sample_uses_quantile_bins() -> None:
    ref = ReferenceDistribution.from_sample([float(i) for i in range(100)], bins=4)
    assert ref.bin_edges == (0.0, 25.0, 50.0, 75.0, 99.0)
    assert ref.proportions == (0.25, 0.25, 0.25, 0.25)
    # Outer bins are open-ended.
    assert [ref.bin_of(v) for v in (-1e9, 0.0, 24.9, 25.0, 99.0, 1e9)] == [0, 0, 0, 1, 3, 3]


def test_constant_feature_gets_one_bin() -> None:
    ref = ReferenceDistribution.from_sample([3.0] * 10)
    assert ref.n_bins == 1
    assert ref.proportions == (1.0,)


@pytest.mark.parametrize(("edges", "props"), [
    ((0.0, 1.0), (0.5, 0.5)),          # counts disagree
    ((1.0, 0.0), (1.0,)),              # not increasing
    ((0.0, math.inf), (1.0,)),         # not finite
    ((0.0, 1.0, 2.0), (0.7, 0.7)),     # does not sum to 1
])
def test_reference_distribution_is_validated(edges: tuple[float, ...], props: tuple[float, ...]) -> None:
    with pytest.raises(ValidationError):
        ReferenceDistribution(bin_edges=edges, proportions=props)


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = random.Random(1)
    train = [rng.gauss(0, 1) for _ in range(5000)]
    ref = ReferenceDistribution.from_sample(train, bins=10)
    same = ref.proportions_of([rng.gauss(0, 1) for _ in range(5000)])
    shifted = ref.proportions_of([rng.gauss(1.0, 1) for _ in range(5000)])
    assert psi(ref.proportions, ref.proportions) == 0.0
    assert psi(ref.proportions, same) < 0.02
    assert psi(ref.proportions, shifted) > 0.25
    with pytest.raises(ValueError, match="same bins"):
        psi([0.5, 0.5], [1.0])


def test_model_meta_round_trip_and_consistency() -> None:
    rows = [[float(i), float(i % 7)] for i in range(200)]
    meta = ModelMeta.build(("a", "b"), datetime(2026, 1, 1, tzinfo=UTC), feature_contract="c1",
                           feature_samples=rows, prediction_sample=[i / 200 for i in range(200)])
    again = ModelMeta.model_validate_json(meta.to_json())
    assert again == meta
    assert again.n_features == 2
    assert set(again.reference.features) == {"a", "b"}
    assert again.reference.prediction is not None
    with pytest.raises(ValidationError, match="n_features is 3"):
        ModelMeta(features=("a", "b"), n_features=3, trained_at=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(ValidationError):  # trained_at must carry a timezone
        ModelMeta(features=("a",), n_features=1, trained_at=datetime(2026, 1, 1))  # noqa: DTZ001


def test_model_meta_keeps_unknown_keys_from_the_pipeline() -> None:
    meta = ModelMeta.model_validate({"features": ["a"], "n_features": 1, "trained_at": "2026-01-01T00:00:00Z",
                                     "seed": 42})
    assert meta.model_extra == {"seed": 42}
