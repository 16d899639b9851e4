"""The README's commands, run as a user runs them (`python -m modelwarden.cli.main …` with their kubeconfig)
against the real control plane and the real operator: history, rollback (and its refusals), resume,
disable and enable. (approve, promote and status: test_operator_rollout; disable: test_kill_switch;
incidents: test_rollback_triggers.)
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from kubernetes import client

from localenv.modelwarden import OperatorProcess
from modelwarden.api.v1alpha1 import Phase
from tests.integration.modelwarden_helpers import Models, approval, artifact, cli, mlmodel


def modelwarden(operator: OperatorProcess, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(operator.cluster, user, *args)


def test_history_rollback_resume_disable_enable_as_a_user_runs_them(
        operator: OperatorProcess, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    admin = Models(api_clients["admin"], namespace)
    uri1, sha1 = artifact(tmp_path, "v1")
    uri2, sha2 = artifact(tmp_path, "v2")
    for version, sha in (("v1", sha1), ("v2", sha2)):
        for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
            Models(api_clients[user], namespace).approve(approval("loans", version, sha, role, user))
    for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
        Models(api_clients[user], namespace).approve(approval("solo", "v1", sha1, role, user))
    admin.create(mlmodel("loans", "v1", uri1, sha1))
    admin.create(mlmodel("solo", "v1", uri1, sha1))
    admin.wait_phase("loans", Phase.STABLE, timeout=90, check=operator.check_alive)
    admin.wait_phase("solo", Phase.STABLE, timeout=90, check=operator.check_alive)

    # rollback with nothing earlier to go back to: the model halts on what it serves, and says why. (Its own
    # model: a version rolled back once is never a rollback target again, so `loans` keeps v1 eligible below.)
    done = modelwarden(operator, "oncall", "rollback", "solo", "-n", namespace)
    assert done.returncode == 0, done.stderr
    status = admin.wait_phase("solo", Phase.HALTED, timeout=60, check=operator.check_alive)
    assert status.stable is not None and status.stable.version == "v1"
    assert "NoRollbackTarget" in {e.reason for e in admin.events("solo")}
    done = modelwarden(operator, "oncall", "resume", "solo", "-n", namespace)
    assert done.returncode == 0, done.stderr
    admin.wait_phase("solo", Phase.STABLE, timeout=60, check=operator.check_alive)

    admin.patch_spec("loans", {"version": "v2", "artifact": {"uri": uri2, "sha256": sha2}})
    admin.wait_phase("loans", Phase.STABLE, timeout=120, check=operator.check_alive,
                     until=lambda s: s.stable is not None and s.stable.version == "v2")

    # history: what was served, by whom approved
    done = modelwarden(operator, "developer", "history", "loans", "-n", namespace)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["VERSION", "SHA256", "OUTCOME"]
    assert [line.split()[:3] for line in lines[1:]] == [["v1", sha1[:12], "Superseded"], ["v2", sha2[:12], "Serving"]]
    assert "finance=finance-approver" in lines[1] and "regulatory=regulatory-approver" in lines[2]
    as_json = json.loads(modelwarden(operator, "developer", "history", "loans", "-n", namespace, "-o", "json").stdout)
    assert [(h["version"], h["sha256"]) for h in as_json["history"]] == [("v1", sha1), ("v2", sha2)]

    # rollback: refused for a version that was never served; otherwise back to v1's sha256, halted
    done = modelwarden(operator, "oncall", "rollback", "loans", "-n", namespace, "--to", "v9")
    assert done.returncode == 1 and "v9 is not in loans's history" in done.stderr
    done = modelwarden(operator, "oncall", "rollback", "loans", "-n", namespace, "--to", "v1")
    assert done.returncode == 0, done.stderr
    status = admin.wait_phase("loans", Phase.HALTED, timeout=90, check=operator.check_alive,
                              until=lambda s: s.stable is not None and s.stable.version == "v1")
    assert status.stable is not None and status.stable.sha256 == sha1
    assert status.last_rollback is not None and status.last_rollback.trigger == "ManualRollback"
    stable = admin.deployment("loans-stable")
    assert stable is not None and stable.spec.template.metadata.annotations["modelwarden.io/sha256"] == sha1
    done = modelwarden(operator, "developer", "status", "loans", "-n", namespace)
    assert "phase Halted" in done.stdout

    # resume: the halt goes and the approved v2 rolls out again; resuming what is not halted is refused
    done = modelwarden(operator, "oncall", "resume", "loans", "-n", namespace)
    assert done.returncode == 0, done.stderr
    status = admin.wait_phase("loans", Phase.STABLE, timeout=120, check=operator.check_alive,
                              until=lambda s: s.stable is not None and s.stable.version == "v2")
    assert status.halt is None
    done = modelwarden(operator, "oncall", "resume", "loans", "-n", namespace)
    assert done.returncode == 1 and "is not halted" in done.stderr

    # disable / enable: the kill switch, and back
    done = modelwarden(operator, "admin", "disable", "loans", "-n", namespace)
    assert done.returncode == 0, done.stderr
    admin.wait_phase("loans", Phase.DISABLED, timeout=60, check=operator.check_alive)
    done = modelwarden(operator, "admin", "enable", "loans", "-n", namespace)
    assert done.returncode == 0, done.stderr
    status = admin.wait_phase("loans", Phase.STABLE, timeout=60, check=operator.check_alive)
    assert admin.get("loans")["spec"]["enabled"] is True
    assert status.stable is not None and status.stable.sha256 == sha2
