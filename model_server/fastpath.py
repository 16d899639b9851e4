"""Verified fast paths for common scikit-learn estimators.

scikit-learn's public ``predict``/``predict_proba`` re-validate their input on every call (dtype, finiteness,
dataframe detection, feature names); for one row that is most of the cost. The server has already validated
its input (a finite float64 matrix with exactly the contract's columns), so for a few estimator types it
computes the same function directly:

* binary ``LogisticRegression``: ``expit(X @ coef + intercept)``;
* linear regressors (``LinearRegression``, ``Ridge``, ``Lasso``, ``ElasticNet``): ``X @ coef + intercept``;
* ``GradientBoostingClassifier`` (binary, log-loss) and ``GradientBoostingRegressor`` (squared error):
  scikit-learn's own tree-stage kernel on the constant initial prediction.

A fast path is used only if it agrees with the estimator's public method on every warm-up row (to 1e-9
relative); otherwise, and for every other estimator, the public method is. So a scikit-learn upgrade that
changes internals falls back to the slow-but-right path instead of serving different numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model_server.arrays import Matrix, ScoreFn, Scores

RTOL = 1e-9
ATOL = 1e-12


def _logistic(model: Any) -> ScoreFn | None:
    from scipy.special import expit  # type: ignore[import-untyped]

    coef = np.ascontiguousarray(model.coef_, dtype=np.float64)
    intercept = np.asarray(model.intercept_, dtype=np.float64)
    if coef.shape[0] != 1 or intercept.shape != (1,):
        return None
    w, b = coef[0].copy(), float(intercept[0])

    def score(x: Matrix) -> Scores:
        return np.asarray(expit(x @ w + b), dtype=np.float64)

    return score


def _linear_regressor(model: Any) -> ScoreFn | None:
    coef = np.asarray(model.coef_, dtype=np.float64)
    if coef.ndim != 1:
        return None
    w, b = coef.copy(), float(np.asarray(model.intercept_, dtype=np.float64).reshape(-1)[0])

    def score(x: Matrix) -> Scores:
        return np.asarray(x @ w + b, dtype=np.float64)

    return score


def _gradient_boosting(model: Any, classifier: bool) -> ScoreFn | None:
    from scipy.special import expit
    from sklearn.ensemble._gradient_boosting import predict_stages

    if model.estimators_.shape[1] != 1:  # multi-class: not one score per row
        return None
    probe = np.zeros((1, model.n_features_in_), dtype=np.float32)
    # The initial prediction of a fitted ensemble (a DummyEstimator prior, or zero) does not depend on X.
    init = np.asarray(model._raw_predict_init(probe), dtype=np.float64)
    if init.shape != (1, 1):
        return None
    baseline = float(init[0, 0])
    estimators, rate = model.estimators_, float(model.learning_rate)

    def score(x: Matrix) -> Scores:
        raw = np.full((len(x), 1), baseline, dtype=np.float64)
        predict_stages(estimators, np.ascontiguousarray(x, dtype=np.float32), rate, raw)
        return np.asarray(expit(raw[:, 0]) if classifier else raw[:, 0], dtype=np.float64)

    return score


def candidate(model: Any) -> tuple[ScoreFn | None, str]:
    """A fast scorer for ``model`` if one applies (unverified), and its name."""
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, LogisticRegression, Ridge

    kind = type(model)
    try:
        if kind is LogisticRegression:
            return _logistic(model), "linear-logistic"
        if kind in (LinearRegression, Ridge, Lasso, ElasticNet):
            return _linear_regressor(model), "linear"
        if kind is GradientBoostingClassifier and getattr(model, "loss", None) == "log_loss":
            return _gradient_boosting(model, classifier=True), "tree-stages"
        if kind is GradientBoostingRegressor and getattr(model, "loss", None) == "squared_error":
            return _gradient_boosting(model, classifier=False), "tree-stages"
    except (AttributeError, ImportError, TypeError, ValueError):
        return None, ""
    return None, ""


def verified(model: Any, reference: ScoreFn, rows: Matrix) -> tuple[ScoreFn, str | None]:
    """The fast scorer if it matches ``reference`` on ``rows`` (one row and all of them), else ``reference``."""
    fast, name = candidate(model)
    if fast is None:
        return reference, None
    try:
        for batch in (rows[:1], rows):
            expected, got = reference(batch), fast(batch)
            if got.shape != expected.shape or not np.allclose(got, expected, rtol=RTOL, atol=ATOL):
                return reference, None
    except Exception:
        return reference, None
    return fast, name
