"""The decision ledger against the real API server, with real identities and the real operator (issue 18).

- A story (dual sign-off, canary, promote by the finance approver, rollback by on-call, resume, kill switch and
  back, a re-enable request) yields a ledger whose `modelwarden ledger verify` passes, with each person's decision
  recorded under their proven name and the rollback's record marked as written after acting.
- Editing, deleting or inserting one record as cluster-admin makes `verify` name exactly that record.
- An action is acted on once even when the operator dies between acting and recording the outcome.
- `ledger export -o markdown` holds the post-incident package (trigger, versions, timeline) from the cluster alone.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localenv.cluster import Cluster
from localenv.modelwarden import OperatorProcess
from modelwarden.api import v1alpha1 as api
from modelwarden.api.v1alpha1 import Phase
from tests.integration.modelwarden_helpers import Models, approval, artifact, cli, mlmodel, wait_for

STEPS = [{"setWeight": 20, "pauseSeconds": 1}, {"setWeight": 50}]


def ledger_objects(admin: client.ApiClient, namespace: str, model: str) -> list[dict[str, Any]]:
    listed = client.CustomObjectsApi(admin).list_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.LEDGER_PLURAL, label_selector=f"{api.LABEL_MODEL}={model}")
    return sorted(listed["items"], key=lambda o: int(o["spec"]["segment"]))


def records(admin: client.ApiClient, namespace: str, model: str) -> list[api.LedgerRecord]:
    return [api.LedgerRecord.model_validate(r) for o in ledger_objects(admin, namespace, model)
            for r in o["spec"]["records"]]


def verify(cluster: Cluster, namespace: str, model: str, user: str = "developer") -> tuple[int, dict[str, Any]]:
    done = cli(cluster, user, "ledger", "verify", model, "-n", namespace, "-o", "json")
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def outcome_of(admin: client.ApiClient, namespace: str, name: str) -> str | None:
    obj = client.CustomObjectsApi(admin).get_namespaced_custom_object(api.GROUP, api.VERSION, namespace,
                                                                      api.ACTION_PLURAL, name)
    return (obj.get("status") or {}).get("outcome")


def act(cluster: Cluster, user: str, *args: str) -> str:
    done = cli(cluster, user, *args, "-o", "json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["action"])


def approve_both(api_clients: dict[str, client.ApiClient], namespace: str, model: str, version: str,
                 sha: str) -> None:
    for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
        Models(api_clients[user], namespace).approve(approval(model, version, sha, role, user))


@pytest.fixture
def story(operator: OperatorProcess, api_clients: dict[str, client.ApiClient], namespace: str,
          tmp_path: Path) -> str:
    """The whole story on model `credit`; yields the model's name with the operator stopped (a still ledger)."""
    cluster, admin = operator.cluster, Models(api_clients["admin"], namespace)
    uri1, sha1 = artifact(tmp_path, "v1")
    uri2, sha2 = artifact(tmp_path, "v2")
    approve_both(api_clients, namespace, "credit", "v1", sha1)
    admin.create(mlmodel("credit", "v1", uri1, sha1, steps=STEPS))
    admin.wait_phase("credit", Phase.STABLE, timeout=90, check=operator.check_alive)

    admin.patch_spec("credit", {"version": "v2", "artifact": {"uri": uri2, "sha256": sha2}})
    admin.wait_phase("credit", Phase.AWAITING_APPROVAL, timeout=60, check=operator.check_alive)
    approve_both(api_clients, namespace, "credit", "v2", sha2)
    admin.wait_phase("credit", Phase.PAUSED, timeout=90, check=operator.check_alive)
    promote = act(cluster, "finance-approver", "promote", "credit", "-n", namespace, "--reason", "KPIs fine")
    admin.wait_phase("credit", Phase.STABLE, timeout=90, check=operator.check_alive,
                     until=lambda s: s.stable is not None and s.stable.version == "v2")

    rollback = act(cluster, "oncall", "rollback", "credit", "-n", namespace, "--to", "v1", "--reason", "drill")
    admin.wait_phase("credit", Phase.HALTED, timeout=90, check=operator.check_alive,
                     until=lambda s: s.stable is not None and s.stable.version == "v1")
    resume = act(cluster, "oncall", "resume", "credit", "-n", namespace)
    # v2 is canaried again from the start: its manual step waits for a person again
    admin.wait_phase("credit", Phase.PAUSED, timeout=120, check=operator.check_alive)
    act(cluster, "regulatory-approver", "promote", "credit", "-n", namespace)
    admin.wait_phase("credit", Phase.STABLE, timeout=120, check=operator.check_alive,
                     until=lambda s: s.stable is not None and s.stable.version == "v2" and s.halt is None)

    assert cli(cluster, "admin", "disable", "credit", "-n", namespace).returncode == 0
    admin.wait_phase("credit", Phase.DISABLED, timeout=60, check=operator.check_alive)
    assert cli(cluster, "admin", "enable", "credit", "-n", namespace).returncode == 0
    admin.wait_phase("credit", Phase.STABLE, timeout=60, check=operator.check_alive)
    reenable = act(cluster, "oncall", "reenable", "credit", "-n", namespace)
    for name in (promote, rollback, resume, reenable):
        wait_for(lambda name=name: outcome_of(api_clients["admin"], namespace, name) is not None,  # type: ignore[misc]
                 timeout=60, what=f"the outcome of {name}")
    wait_for(lambda: any(r.decision == "EnableRequested" for r in records(api_clients["admin"], namespace, "credit")),
             timeout=30, what="the re-enable request in the ledger")
    operator.stop()
    return "credit"


def test_the_story_is_recorded_with_who_did_what_and_verifies(
        story: str, operator: OperatorProcess, api_clients: dict[str, client.ApiClient], namespace: str) -> None:
    admin = api_clients["admin"]
    got = records(admin, namespace, story)
    decisions = [r.decision for r in got]
    for expected in ("QuorumMet", "Deployed", "StepAdvanced", "PromoteRequested", "Promoted", "RollbackRequested",
                     "RollbackStarted", "TrafficRestored", "ResumeRequested", "Resumed", "KillSwitchEngaged",
                     "KillSwitchReleased", "EnableRequested"):
        assert expected in decisions, (expected, decisions)
    by: dict[str, api.LedgerRecord] = {}
    for r in got:
        by.setdefault(r.decision, r)  # the first of each
    assert [r.actor for r in got if r.decision == "PromoteRequested"] == [
        "user:finance-approver", "user:regulatory-approver"]
    assert by["PromoteRequested"].actor == "user:finance-approver"
    assert by["PromoteRequested"].version == "v2" and by["PromoteRequested"].inputs["why"] == "KPIs fine"
    assert by["RollbackRequested"].actor == "user:oncall" and by["RollbackRequested"].inputs["to"] == "v1"
    assert by["ResumeRequested"].actor == "user:oncall"
    # the servers of KWOK pods cannot be reached: the request is recorded as rejected, with why
    assert by["EnableRequested"].outcome == "Rejected"
    assert by["RollbackStarted"].recorded_after_acting and by["RollbackStarted"].actor == "operator"
    assert by["RollbackStarted"].inputs["trigger"] == "ManualRollback"
    assert by["QuorumMet"].inputs["approval.finance"].startswith("finance-approver")
    engaged = by["KillSwitchEngaged"]
    model = Models(admin, namespace).get(story)
    assert engaged.generation < model["metadata"]["generation"] == by["KillSwitchReleased"].generation
    assert [r.seq for r in got] == list(range(len(got)))
    assert len({r.key for r in got}) == len(got), "no decision recorded twice"

    status = api.MLModelStatus.model_validate(model["status"])
    assert status.ledger is not None and (status.ledger.seq, status.ledger.hash) == (got[-1].seq, got[-1].hash)
    code, result = verify(operator.cluster, namespace, story)
    assert code == 0 and result["ok"], result
    assert result["records"] == len(got)


def _tamper(admin: client.ApiClient, namespace: str, obj: dict[str, Any], records_: list[dict[str, Any]]) -> None:
    body = copy.deepcopy(obj)
    body["spec"]["records"] = records_
    client.CustomObjectsApi(admin).replace_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.LEDGER_PLURAL, obj["metadata"]["name"], body)


@pytest.mark.parametrize("change", ["edit", "delete", "insert"])
def test_one_record_changed_by_cluster_admin_is_named_by_verify(
        change: str, story: str, operator: OperatorProcess, api_clients: dict[str, client.ApiClient],
        namespace: str) -> None:
    admin = api_clients["admin"]
    obj = ledger_objects(admin, namespace, story)[0]
    stored = obj["spec"]["records"]
    k = len(stored) // 2
    name = obj["metadata"]["name"]
    target = stored[k]
    if change == "edit":  # rewrite who promoted, keep everything else (hash, signature) as it was
        edited = {**target, "actor": "user:someone-else", "outcome": "Rejected"}
        _tamper(admin, namespace, obj, [*stored[:k], edited, *stored[k + 1:]])
        expected = ("altered", target["seq"], f"ModelLedger {name}, records[{k}]")
    elif change == "delete":
        _tamper(admin, namespace, obj, [*stored[:k], *stored[k + 1:]])
        expected = ("removed", target["seq"], f"ModelLedger {name}, records[{k}]")
    else:  # a plausible record: right shape and seq, hash recomputed, but not signed by the operator's key
        forged = {**stored[k], "decision": "Promoted", "actor": "operator", "key": "forged"}
        _tamper(admin, namespace, obj, [*stored[:k], forged, *stored[k:]])
        expected = ("inserted", forged["seq"], f"ModelLedger {name}, records[{k}]")
    code, result = verify(operator.cluster, namespace, story)
    assert code == 1, result
    finding = result["finding"]
    assert (finding["problem"], finding["seq"], finding["where"]) == expected, finding
    done = cli(operator.cluster, "developer", "ledger", "verify", story, "-n", namespace)
    assert f"record {expected[1]} {expected[0]}" in done.stdout, done.stdout


def test_export_is_the_post_incident_package_from_the_cluster_alone(
        story: str, operator: OperatorProcess, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    operator.log_path.unlink()  # nothing below may come from the operator's log
    done = cli(operator.cluster, "developer", "ledger", "export", story, "-n", namespace, "-o", "markdown")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "Verification: **passed**" in text
    assert "## Post-incident: rollback" in text and "**Trigger**: ManualRollback" in text
    assert "**Requested by**: user:oncall" in text
    assert "**Affected versions**: v2@" in text and "→ v1@" in text
    for step in ("RollbackStarted", "TrafficRestored", "Halted", "ResumeRequested by user:oncall"):
        assert step in text, step
    assert "| user:finance-approver | PromoteRequested |" in text
    lines = cli(operator.cluster, "developer", "ledger", "export", story, "-n", namespace, "-o", "jsonl").stdout
    exported = [api.LedgerRecord.model_validate(json.loads(line)) for line in lines.splitlines()]
    assert [r.seq for r in exported] == list(range(len(exported))) and exported[0].signature

    # offline, as a regulator checks what was handed over: the file, the published keys and the head
    (tmp_path / "ledger.jsonl").write_text(lines)
    keys = client.CoreV1Api(api_clients["developer"]).read_namespaced_config_map(
        "modelwarden-ledger-public-keys", "modelwarden-system")
    (tmp_path / "keys.json").write_text(json.dumps({"data": keys.data}))
    head = f"{exported[-1].seq}:{exported[-1].hash}"
    offline = ["ledger", "verify", story, "--records", str(tmp_path / "ledger.jsonl"), "--public-keys",
               str(tmp_path / "keys.json"), "--head", head]
    done = cli(operator.cluster, "developer", *offline)
    assert done.returncode == 0 and "verifies" in done.stdout, done.stdout + done.stderr
    changed = lines.splitlines()
    changed[3] = changed[3].replace('"actor":"operator"', '"actor":"user:someone"').replace(
        '"actor":"user:finance-approver"', '"actor":"user:someone"')
    (tmp_path / "ledger.jsonl").write_text("\n".join(changed))
    done = cli(operator.cluster, "developer", *offline)
    assert done.returncode == 1 and "record 3 altered (ledger.jsonl, records[3])" in done.stdout, done.stdout


def test_an_action_is_acted_on_once_when_the_operator_dies_before_recording_it(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    admin = Models(api_clients["admin"], namespace)
    uri1, sha1 = artifact(tmp_path, "v1")
    uri2, sha2 = artifact(tmp_path, "v2")
    approve_both(api_clients, namespace, "risk", "v1", sha1)
    approve_both(api_clients, namespace, "risk", "v2", sha2)
    first = OperatorProcess(modelwarden_installed, tmp_path / "operator-1.log",
                            env={"MODELWARDEN_RESYNC_SECONDS": "5"}).start()
    admin.create(mlmodel("risk", "v1", uri1, sha1))
    admin.wait_phase("risk", Phase.STABLE, timeout=90, check=first.check_alive)
    admin.patch_spec("risk", {"version": "v2", "artifact": {"uri": uri2, "sha256": sha2}})
    admin.wait_phase("risk", Phase.STABLE, timeout=120, check=first.check_alive,
                     until=lambda s: s.stable is not None and s.stable.version == "v2")
    first.stop()

    # This operator exits, like a SIGKILL, right after the status write that carried the rollback out and
    # before the action's own status says so.
    dying = OperatorProcess(modelwarden_installed, tmp_path / "operator-2.log",
                            env={"MODELWARDEN_RESYNC_SECONDS": "5", "MODELWARDEN_FAULT": "after-action-committed"})
    dying.start()
    rollback = act(modelwarden_installed, "oncall", "rollback", "risk", "-n", namespace, "--to", "v1")
    assert dying.process is not None
    dying.process.wait(timeout=60)
    assert dying.process.returncode == 137, dying.log()
    dying.process = None
    status = admin.status("risk")
    assert [h.name for h in status.handled_actions] == [rollback]
    assert outcome_of(api_clients["admin"], namespace, rollback) is None, "it died before recording the outcome"

    again = OperatorProcess(modelwarden_installed, tmp_path / "operator-3.log",
                            env={"MODELWARDEN_RESYNC_SECONDS": "5"}).start()
    try:
        wait_for(lambda: outcome_of(api_clients["admin"], namespace, rollback) == "Succeeded", timeout=60,
                 what="the rollback's outcome after the restart")
        status = admin.wait_phase("risk", Phase.HALTED, timeout=60, check=again.check_alive,
                                  until=lambda s: s.last_rollback is not None and s.last_rollback.completed_at)
    finally:
        again.stop()
    rollbacks = [i.id for i in status.incidents] or [status.last_rollback.id if status.last_rollback else ""]
    assert len(set(rollbacks)) == 1, f"rolled back more than once: {rollbacks}"
    got = records(api_clients["admin"], namespace, "risk")
    assert [r.decision for r in got].count("RollbackRequested") == 1
    assert [r.decision for r in got].count("RollbackStarted") == 1
    code, result = verify(modelwarden_installed, namespace, "risk")
    assert code == 0, result
