"""`spec.rollout.shadow` (issue 20) as the API server takes it: integers and decimal strings only, CEL messages
that name the field, defaults filled in."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client

from localenv.cluster import Cluster
from tests.integration.modelwarden_helpers import Models, mlmodel
from tests.integration.test_api_admission import _rejection

SHA = "ab" * 32
GATEWAY = {"type": "gatewayAPI", "gatewayAPI": {"httpRoute": "m"}}


def _shadowed(shadow: dict[str, Any], routing: dict[str, Any] | None = None) -> dict[str, Any]:
    body = copy.deepcopy(mlmodel("m", "v1", "file:///models/m.skops", SHA))
    body["spec"]["rollout"] = {"steps": [{"setWeight": 50, "pauseSeconds": 60}],
                               "trafficRouting": routing or GATEWAY, "shadow": shadow}
    return body


BAD_SHADOWS: list[tuple[str, dict[str, Any], str]] = [
    ("mirror share of 0", _shadowed({"mirrorPercent": 0}), "spec.rollout.shadow.mirrorPercent"),
    ("mirror share above 100", _shadowed({"mirrorPercent": 101}), "spec.rollout.shadow.mirrorPercent"),
    ("mirror share as a string", _shadowed({"mirrorPercent": "10"}), "spec.rollout.shadow.mirrorPercent"),
    ("agreement as a float", _shadowed({"minDecisionAgreement": 0.95}), "spec.rollout.shadow.minDecisionAgreement"),
    ("agreement above 1", _shadowed({"minDecisionAgreement": "1.5"}), "spec.rollout.shadow.minDecisionAgreement"),
    ("p99 difference above 1", _shadowed({"maxP99ScoreDifference": "2"}),
     "spec.rollout.shadow.maxP99ScoreDifference"),
    ("negative PSI", _shadowed({"maxScorePsi": "-0.1"}), "spec.rollout.shadow.maxScorePsi"),
    ("threshold above 1", _shadowed({"decisionThreshold": "1.2"}), "spec.rollout.shadow.decisionThreshold"),
    ("no compared minimum", _shadowed({"minComparedRequests": 0}), "spec.rollout.shadow.minComparedRequests"),
    ("too short", _shadowed({"durationSeconds": 5}), "spec.rollout.shadow.durationSeconds"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_SHADOWS, ids=[c[0] for c in BAD_SHADOWS])
def test_bad_shadow_stage_is_rejected_naming_the_field(case: str, body: dict[str, Any], field: str,
                                                       modelwarden_installed: Cluster, admin_api: client.ApiClient,
                                                       namespace: str) -> None:
    status, message = _rejection(lambda: Models(admin_api, namespace).create(body))
    assert status == 422, message
    assert field in message, message


def test_shadow_stage_defaults_are_filled_in(modelwarden_installed: Cluster, admin_api: client.ApiClient,
                                             namespace: str) -> None:
    created = Models(admin_api, namespace).create(_shadowed({"mirrorPercent": 25}))
    assert created["spec"]["rollout"]["shadow"] == {
        "mirrorPercent": 25, "durationSeconds": 600, "minComparedRequests": 500, "maxP99ScoreDifference": "0.05",
        "minDecisionAgreement": "0.95", "maxScorePsi": "0.2", "decisionThreshold": "0.5"}


def test_shadow_stage_is_accepted_under_the_replicas_router(modelwarden_installed: Cluster,
                                                            admin_api: client.ApiClient, namespace: str) -> None:
    """The candidate's pods are kept out of the model's Service by a label (the replicas router's own way)."""
    created = Models(admin_api, namespace).create(_shadowed({}, {"type": "replicas"}))
    assert created["spec"]["rollout"]["shadow"]["mirrorPercent"] == 10
