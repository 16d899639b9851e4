"""Issue 27, item 7: a ledger that cannot be shortened or re-signed unnoticed, on the real API server with the real
operator (as its least-privilege user) and real identities.

The story, once per attack, each on a model that went Stable with a ledger and a checkpoint:

- *tail deleted*: cluster-admin rewrites the open segment without its newest records;
- *whole ledger deleted*: cluster-admin deletes every ModelLedger segment of the model;
- *foreign key added*: whoever may write the published-keys ConfigMap adds their own key there and re-signs a
  forged newest record with it.

Each time `modelwarden ledger verify` (run by `developer`) fails with a precise finding; at the next decision (v2
approved and set in spec) the operator does not append, re-chain or re-sign: the model carries `LedgerBroken` with a
named reason, v2 is not rolled out, and the ledger stays exactly as the attacker left it.

And: a namespace editor (`developer` with the `edit` role there), the operator's own user and anyone else but a
cluster administrator cannot add a trusted key (TrustPolicy) nor move a checkpoint.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localenv.cluster import Cluster
from localenv.modelwarden import OperatorProcess
from modelwarden.api import v1alpha1 as api
from modelwarden.api.v1alpha1 import Phase
from modelwarden.artifacts.ledger_keys import PUBLIC_KEYS_CONFIGMAP, LedgerSigner
from modelwarden.engine.ledger import digest
from tests.integration.modelwarden_helpers import Models, approval, artifact, cli, mlmodel, wait_for


def segments(admin: client.ApiClient, namespace: str, model: str) -> list[dict[str, Any]]:
    listed: Any = client.CustomObjectsApi(admin).list_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.LEDGER_PLURAL, label_selector=f"{api.LABEL_MODEL}={model}")
    return sorted(listed["items"], key=lambda o: int(o["spec"]["segment"]))


def checkpoint(admin: client.ApiClient, uid: str) -> dict[str, Any] | None:
    try:
        obj: Any = client.CustomObjectsApi(admin).get_cluster_custom_object(
            api.GROUP, api.VERSION, api.CHECKPOINT_PLURAL, uid)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return dict(obj)


def approve_both(api_clients: dict[str, client.ApiClient], namespace: str, model: str, version: str,
                 sha: str) -> None:
    for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
        Models(api_clients[user], namespace).approve(approval(model, version, sha, role, user))


def verify(operator: OperatorProcess, namespace: str, model: str) -> tuple[int, dict[str, Any]]:
    done = cli(operator.cluster, "developer", "ledger", "verify", model, "-n", namespace, "-o", "json")
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def ledger_broken(status: api.MLModelStatus) -> api.Condition | None:
    return next((c for c in status.conditions if c.type == api.ConditionType.LEDGER_BROKEN), None)


@pytest.mark.parametrize("attack", ["tail-deleted", "whole-ledger-deleted", "foreign-key-added"])
def test_a_shortened_or_resigned_ledger_is_named_by_verify_and_the_operator_stops_appending(
        attack: str, operator: OperatorProcess, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    admin_api = api_clients["admin"]
    admin, custom = Models(admin_api, namespace), client.CustomObjectsApi(admin_api)
    uri1, sha1 = artifact(tmp_path, "v1")
    uri2, sha2 = artifact(tmp_path, "v2")
    approve_both(api_clients, namespace, "credit", "v1", sha1)
    admin.create(mlmodel("credit", "v1", uri1, sha1))
    admin.wait_phase("credit", Phase.STABLE, timeout=90, check=operator.check_alive)
    uid = admin.get("credit")["metadata"]["uid"]

    def checkpointed() -> bool:
        head = admin.status("credit").ledger
        return head is not None and (checkpoint(admin_api, uid) or {}).get("spec", {}).get("seq") == head.seq

    wait_for(checkpointed, timeout=30, what="the checkpoint at the status's head")
    code, result = verify(operator, namespace, "credit")
    assert code == 0 and result["ok"], result
    stored = segments(admin_api, namespace, "credit")
    assert len(stored) == 1
    records = stored[0]["spec"]["records"]
    n = len(records)
    assert n >= 2, records  # QuorumMet, Deployed

    if attack == "tail-deleted":
        body = copy.deepcopy(stored[0])
        body["spec"]["records"] = records[:-1]
        custom.replace_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.LEDGER_PLURAL,
                                                body["metadata"]["name"], body)
        expected = ("removed", n - 1, "after the last stored record", "the chain ends before the published head")
        reason = api.Reason.LEDGER_TAIL_MISSING
    elif attack == "whole-ledger-deleted":
        custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.LEDGER_PLURAL,
                                               stored[0]["metadata"]["name"])
        segment_name = stored[0]["metadata"]["name"]
        expected = ("removed", 0, "after the last stored record",
                    f"the whole ledger is missing: segments 0-0 (ModelLedger {segment_name})")
        reason = api.Reason.LEDGER_TAIL_MISSING
    else:
        # Whoever may write the published-keys ConfigMap publishes their own key and re-signs a forged record.
        foreign = LedgerSigner.generate()
        client.CoreV1Api(admin_api).patch_namespaced_config_map(
            PUBLIC_KEYS_CONFIGMAP, "modelwarden-system", {"data": {foreign.key_id: foreign.public_pem()}})
        last = api.LedgerRecord.model_validate(records[-1])
        forged = last.model_copy(update={"actor": "user:someone-else", "key_id": foreign.key_id})
        forged = forged.model_copy(update={"hash": digest(forged)})
        forged = forged.model_copy(update={"signature": foreign.sign(forged.hash)})
        body = copy.deepcopy(stored[0])
        body["spec"]["records"] = [*records[:-1], forged.wire()]
        custom.replace_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.LEDGER_PLURAL,
                                                body["metadata"]["name"], body)
        expected = ("altered", n - 1, f"records[{n - 1}]",
                    f"signed by key {foreign.key_id}, which the cluster's TrustPolicy does not trust (it is only "
                    "published, not trusted)")
        reason = api.Reason.LEDGER_TAIL_ALTERED
    left = segments(admin_api, namespace, "credit")
    held = checkpoint(admin_api, uid)

    code, result = verify(operator, namespace, "credit")
    assert code == 1, result
    finding = result["finding"]
    assert (finding["problem"], finding["seq"]) == expected[:2], finding
    assert expected[2] in finding["where"] and expected[3] in finding["detail"], finding

    # The next decision: v2, approved, set in spec. The operator must not append to (or re-chain) the broken ledger.
    approve_both(api_clients, namespace, "credit", "v2", sha2)
    admin.patch_spec("credit", {"version": "v2", "artifact": {"uri": uri2, "sha256": sha2}})
    wait_for(lambda: (c := ledger_broken(admin.status("credit"))) is not None and c.status == "True", timeout=60,
             what="LedgerBroken on the model")
    status = admin.status("credit")
    condition = ledger_broken(status)
    assert condition is not None and condition.reason == reason, condition
    assert status.stable is not None and status.stable.version == "v1" and status.canary is None, status
    assert [e.reason for e in admin.events("credit")].count(api.ConditionType.LEDGER_BROKEN) == 1
    assert "decision ledger broken" in operator.log() or reason in operator.log()
    operator.check_alive()
    # nothing appended, re-chained or re-signed: the ledger and the checkpoint are as the attacker left them
    after = segments(admin_api, namespace, "credit")
    assert [o["spec"]["records"] for o in after] == [o["spec"]["records"] for o in left]
    assert (checkpoint(admin_api, uid) or {}).get("spec") == (held or {}).get("spec")
    code, again = verify(operator, namespace, "credit")
    assert code == 1 and again["finding"] == finding


def _trust_policy(key: LedgerSigner) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": "TrustPolicy", "metadata": {"name": "by-a-tenant"},
            "spec": {"ledgerKeys": [{"keyId": key.key_id, "publicKey": key.public_pem(),
                                     "notBefore": "2020-01-01T00:00:00Z"}],
                     "artifactKeys": [{"name": "mine", "publicKey": key.public_pem()}]}}


def test_only_a_cluster_administrator_can_add_a_trusted_key_or_move_a_checkpoint(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str) -> None:
    admin_api = api_clients["admin"]
    # `developer` is a namespace editor here (the built-in `edit` role), the strongest tenant role
    binding: Any = {
        "metadata": {"name": "developer-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "developer"}]}
    client.RbacAuthorizationV1Api(admin_api).create_namespaced_role_binding(namespace, binding)
    key = LedgerSigner.generate()
    for user in ("developer", "modelwarden-operator", "oncall", "finance-approver"):
        custom = client.CustomObjectsApi(api_clients[user])
        with pytest.raises(ApiException) as created:
            custom.create_cluster_custom_object(api.GROUP, api.VERSION, api.TRUST_PLURAL, _trust_policy(key))
        assert created.value.status == 403, (user, created.value.body)
        with pytest.raises(ApiException) as patched:
            custom.patch_cluster_custom_object(api.GROUP, api.VERSION, api.TRUST_PLURAL, api.TRUST_POLICY_NAME,
                                               {"spec": _trust_policy(key)["spec"]})
        assert patched.value.status == 403, (user, patched.value.body)
        message = json.loads(patched.value.body or "{}")["message"]
        assert f'User "{user}" cannot patch resource "trustpolicies"' in message, message
    # every user may read it (verify needs it), and the operator's key is the only ledger key trusted
    policy: Any = client.CustomObjectsApi(api_clients["developer"]).get_cluster_custom_object(
        api.GROUP, api.VERSION, api.TRUST_PLURAL, api.TRUST_POLICY_NAME)
    assert key.key_id not in {k["keyId"] for k in policy["spec"]["ledgerKeys"]}
    # checkpoints: a namespace editor may not create or move one (only the operator writes them)
    fake = {"apiVersion": api.API_VERSION, "kind": "ModelLedgerCheckpoint", "metadata": {"name": "some-uid"},
            "spec": {"namespace": namespace, "model": "credit", "modelUid": "some-uid", "seq": 0, "hash": "0" * 64,
                     "at": "2027-01-01T00:00:00Z"}}
    with pytest.raises(ApiException) as moved:
        client.CustomObjectsApi(api_clients["developer"]).create_cluster_custom_object(
            api.GROUP, api.VERSION, api.CHECKPOINT_PLURAL, fake)
    assert moved.value.status == 403, moved.value.body
