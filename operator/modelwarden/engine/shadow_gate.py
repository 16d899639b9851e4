"""The shadow stage's verdict on its comparison numbers (issue 20). Pure; the numbers come from Prometheus.

``Fired`` (the candidate disagrees: halt it before any user saw it), ``Clear`` (agrees: step 1 may open once the
stage lasted its duration) or ``NoData`` — no series, NaN, or fewer compared requests than the minimum is no
verdict, never a pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from modelwarden.api.v1alpha1 import Reason, Shadow
from modelwarden.engine.triggers import Assessment

SHADOW_DISAGREEMENT = Reason.SHADOW_DISAGREEMENT.value


@dataclass(frozen=True)
class ShadowNumbers:
    """The candidate's comparison so far (its pods' counters summed; None: no series)."""

    compared: float | None
    agreements: float | None
    p99_difference: float | None
    psi: float | None
    feature_mismatches: float | None


def _known(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def assess_shadow(numbers: ShadowNumbers | None, shadow: Shadow, *, max_feature_mismatch: int) -> Assessment:
    if numbers is None or not _known(numbers.compared):
        return Assessment(SHADOW_DISAGREEMENT, "NoData", "no shadow comparison metrics from the candidate")
    assert numbers.compared is not None
    compared = numbers.compared
    values = {"compared": _fmt(compared), "minCompared": str(shadow.min_compared_requests)}
    mismatches = numbers.feature_mismatches if _known(numbers.feature_mismatches) else 0.0
    assert mismatches is not None
    values["featureMismatches"] = _fmt(mismatches)
    if mismatches > max_feature_mismatch:
        # The candidate cannot read what the stable is sent: decisive however few rows were compared.
        return Assessment(SHADOW_DISAGREEMENT, "Fired",
                          f"shadow stage failed: {mismatches:.0f} FEATURE_MISMATCH > {max_feature_mismatch}", values)
    if compared < shadow.min_compared_requests:
        return Assessment(SHADOW_DISAGREEMENT, "NoData",
                          f"fewer than the {shadow.min_compared_requests} compared requests needed for a verdict",
                          values)
    if not (_known(numbers.agreements) and _known(numbers.p99_difference) and _known(numbers.psi)):
        return Assessment(SHADOW_DISAGREEMENT, "NoData", "the shadow comparison is incomplete (a series is missing "
                          "or NaN)", values)
    assert numbers.agreements is not None and numbers.p99_difference is not None and numbers.psi is not None
    agreement = numbers.agreements / compared if compared else 0.0
    values |= {"decisionAgreement": _fmt(agreement), "p99ScoreDifference": _fmt(numbers.p99_difference),
               "scorePsi": _fmt(numbers.psi)}
    failures = []
    if Decimal(str(numbers.p99_difference)) > Decimal(shadow.max_p99_score_difference):
        failures.append(f"p99 score difference {numbers.p99_difference:.3g} > {shadow.max_p99_score_difference}")
    if Decimal(str(agreement)) < Decimal(shadow.min_decision_agreement):
        failures.append(f"decision agreement {agreement:.2%} < {Decimal(shadow.min_decision_agreement):.2%}")
    if Decimal(str(numbers.psi)) > Decimal(shadow.max_score_psi):
        failures.append(f"score PSI {numbers.psi:.3g} > {shadow.max_score_psi}")
    if failures:
        return Assessment(SHADOW_DISAGREEMENT, "Fired", "shadow stage failed: " + "; ".join(failures), values)
    return Assessment(SHADOW_DISAGREEMENT, "Clear", "the candidate agrees with the stable within the shadow criteria",
                      values)
