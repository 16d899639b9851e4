"""ModelActions carry an identity the API server proves (manifests/admission/modelwarden-action-policy.yaml), with the
local cluster's static-token users: the requester is the requesting user, the verb is one of the user's groups'
verbs, and nobody can edit an action afterwards. (What the operator does with them: test_operator_rollout,
test_cli_verbs, and the crash test in test_ledger.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localenv.cluster import Cluster
from modelwarden.api import v1alpha1 as api


def action(verb: str, requester: str, to: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"modelRef": {"name": "m"}, "verb": verb, "requester": requester}
    if to:
        spec["to"] = to
    return {"apiVersion": api.API_VERSION, "kind": "ModelAction",
            "metadata": {"generateName": f"m-{verb}-"}, "spec": spec}


def create(api_client: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return dict(client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.ACTION_PLURAL, body))


def _rejection(call: Callable[[], object]) -> tuple[int, str]:
    with pytest.raises(ApiException) as rejected:
        call()
    return int(rejected.value.status), str(json.loads(rejected.value.body)["message"])


ALLOWED: list[tuple[str, str]] = [
    ("finance-approver", "promote"), ("regulatory-approver", "promote"), ("oncall", "promote"),
    ("oncall", "rollback"), ("oncall", "resume"), ("oncall", "enable"),
]


@pytest.mark.parametrize(("user", "verb"), ALLOWED, ids=[f"{u} {v}" for u, v in ALLOWED])
def test_a_user_may_ask_for_the_verbs_of_their_groups_as_themselves(
        user: str, verb: str, modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient],
        namespace: str) -> None:
    created = create(api_clients[user], namespace, action(verb, user))
    assert created["spec"]["requester"] == user


DENIED: list[tuple[str, str, str, str]] = [
    # (case, requesting user, body, expected message fragment)
    ("a developer forging the finance approver's name", "developer", "finance-approver",
     "spec.requester must be the requesting user developer, not finance-approver"),
    ("an approver naming on-call", "finance-approver", "oncall",
     "spec.requester must be the requesting user finance-approver"),
]


@pytest.mark.parametrize(("case", "user", "claimed", "fragment"), DENIED, ids=[d[0] for d in DENIED])
def test_a_forged_requester_is_refused_by_the_api_server(
        case: str, user: str, claimed: str, fragment: str, modelwarden_installed: Cluster,
        api_clients: dict[str, client.ApiClient], namespace: str) -> None:
    status, message = _rejection(lambda: create(api_clients[user], namespace, action("promote", claimed)))
    assert status == 403, message
    assert fragment in message, message


VERBS_DENIED: list[tuple[str, str]] = [
    ("developer", "promote"), ("finance-approver", "rollback"), ("regulatory-approver", "resume"),
    ("dual-approver", "enable"), ("admin", "rollback"),
]


@pytest.mark.parametrize(("user", "verb"), VERBS_DENIED, ids=[f"{u} {v}" for u, v in VERBS_DENIED])
def test_a_verb_outside_the_users_groups_is_refused(
        user: str, verb: str, modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient],
        namespace: str) -> None:
    status, message = _rejection(lambda: create(api_clients[user], namespace, action(verb, user)))
    assert status == 403, message
    assert f"{user} may not {verb}" in message, message


def test_an_action_cannot_be_edited_after_creation(modelwarden_installed: Cluster,
                                                   api_clients: dict[str, client.ApiClient], namespace: str) -> None:
    oncall = client.CustomObjectsApi(api_clients["oncall"])
    admin = client.CustomObjectsApi(api_clients["admin"])
    name = create(api_clients["oncall"], namespace, action("rollback", "oncall", to="v1"))["metadata"]["name"]
    # its requester has no update at all (RBAC); even a cluster admin is refused (the policy and the CRD's rule)
    for who, fragment in ((oncall, 'User "oncall" cannot patch'), (admin, "immutable")):
        status, message = _rejection(lambda who=who: who.patch_namespaced_custom_object(  # type: ignore[misc]
            api.GROUP, api.VERSION, namespace, api.ACTION_PLURAL, name, {"spec": {"to": "v2"}}))
        assert status in (403, 422), message
        assert fragment in message, message
    # its requester cannot write the outcome either: only the operator may write status
    status, message = _rejection(lambda: oncall.patch_namespaced_custom_object_status(
        api.GROUP, api.VERSION, namespace, api.ACTION_PLURAL, name, {"status": {"outcome": "Succeeded"}}))
    assert status == 403, message
    kept = admin.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.ACTION_PLURAL, name)
    assert kept["spec"]["to"] == "v1" and "outcome" not in (kept.get("status") or {})


def test_only_a_rollback_names_a_target(modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient],
                                        namespace: str) -> None:
    body = action("promote", "oncall")
    body["spec"]["to"] = "v1"
    status, message = _rejection(lambda: create(api_clients["oncall"], namespace, body))
    assert status == 422 and "only a rollback names a target version" in message, message


def test_the_ledger_is_readable_by_viewers_and_written_by_nobody_but_the_operator(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str) -> None:
    segment = {"apiVersion": api.API_VERSION, "kind": "ModelLedger", "metadata": {"name": "m-forged-000000"},
               "spec": {"modelRef": {"name": "m"}, "modelUid": "u", "segment": 0, "records": []}}
    for user in ("developer", "finance-approver", "oncall"):
        status, message = _rejection(lambda user=user: client.CustomObjectsApi(  # type: ignore[misc]
            api_clients[user]).create_namespaced_custom_object(api.GROUP, api.VERSION, namespace,
                                                               api.LEDGER_PLURAL, segment))
        assert status == 403, message
        listed = client.CustomObjectsApi(api_clients[user]).list_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.LEDGER_PLURAL)
        assert listed["items"] == []
    operator = client.CustomObjectsApi(api_clients["modelwarden-operator"])
    operator.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.LEDGER_PLURAL, segment)
