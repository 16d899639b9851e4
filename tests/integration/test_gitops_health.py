"""What Flux and Argo CD conclude about an MLModel in each phase, asked of their own code.

MLModels are driven into every phase on the real control plane by the production Controller (in this process,
with an injected clock, as in test_rollback_triggers.py). Each object is read back from the API server and
judged by
- the real kstatus library Flux is built on (``hack/kstatus-check``, ``sigs.k8s.io/cli-utils``), and
- our Argo CD health check (``manifests/argocd/…/MLModel/health.lua``) in gopher-lua, Argo CD's Lua runtime
  (``hack/argocd-health-check``).
The verdict table is printed. With ``MODELWARDEN_WRITE_ARGOCD_TESTDATA=1`` the captured objects are written
as the health check's testdata (namespace and artifact paths made neutral), which is how the committed
testdata was made.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localenv import gotools
from localenv.cluster import Cluster
from localenv.prometheus import Prometheus
from modelwarden.api import v1alpha1 as api
from modelwarden.api.v1alpha1 import MLModelStatus, Phase
from tests.integration.modelwarden_helpers import Models, approval, artifact, cli, mlmodel
from tests.integration.test_rollback_triggers import InProcessOperator, budget_series, promoted_v2

ROOT = Path(__file__).resolve().parents[2]
HEALTH_DIR = ROOT / "manifests" / "argocd" / "resource_customizations" / "modelwarden.io" / "MLModel"
WRITE_TESTDATA = os.environ.get("MODELWARDEN_WRITE_ARGOCD_TESTDATA") == "1"


@dataclass(frozen=True)
class Expected:
    phase: str | None
    kstatus: str
    argocd: str
    reason: str = ""


# capture name -> what a user should see in Flux (kstatus) and Argo CD
EXPECTED: dict[str, Expected] = {
    "created-not-yet-reconciled": Expected(None, "InProgress", "Progressing"),
    "awaiting-approval": Expected(Phase.AWAITING_APPROVAL, "InProgress", "Suspended", "AwaitingApproval"),
    "stable": Expected(Phase.STABLE, "Current", "Healthy", "Stable"),
    # The previous generation's conditions are still there; observedGeneration behind is what says "in progress".
    "new-generation-not-yet-observed": Expected(Phase.STABLE, "InProgress", "Progressing", "Stable"),
    "progressing-timed-pause": Expected(Phase.PROGRESSING, "InProgress", "Progressing", "StepPaused"),
    "paused-awaiting-promote": Expected(Phase.PAUSED, "InProgress", "Suspended", "AwaitingPromote"),
    "rolling-back": Expected(Phase.ROLLING_BACK, "InProgress", "Progressing", "RollingBack"),
    "halted-manual-rollback": Expected(Phase.HALTED, "Failed", "Degraded", "ManualRollback"),
    "disabled-kill-switch": Expected(Phase.DISABLED, "Current", "Suspended", "KillSwitchEngaged"),
    "sha256-mismatch": Expected(Phase.FAILED, "Failed", "Degraded", "Sha256Mismatch"),
    "halted-no-rollback-target": Expected(Phase.HALTED, "Failed", "Degraded", "NoRollbackTarget"),
    "invalid-schedule": Expected(Phase.STABLE, "Failed", "Degraded", "InvalidSchedule"),
    "halted-error-budget": Expected(Phase.HALTED, "Failed", "Degraded", "ErrorBudgetExhausted"),
}


@pytest.fixture(scope="module")
def kstatus_check() -> Path:
    return gotools.build("kstatus-check")


@pytest.fixture(scope="module")
def argocd_health_check() -> Path:
    return gotools.build("argocd-health-check")


class Captures:
    """Objects read back from the API server, judged by kstatus and by health.lua."""

    def __init__(self, admin: Models, tmp_path: Path, kstatus_check: Path, argocd_health_check: Path) -> None:
        self.admin = admin
        self.tmp_path = tmp_path
        self.kstatus_check = kstatus_check
        self.argocd_health_check = argocd_health_check
        self.objects: dict[str, dict[str, Any]] = {}

    def take(self, capture: str, name: str) -> dict[str, Any]:
        self.objects[capture] = self.admin.get(name)
        return self.objects[capture]

    def kstatus(self) -> dict[str, dict[str, Any]]:
        listing = {"apiVersion": "v1", "kind": "List", "items": list(self.objects.values())}
        done = subprocess.run([str(self.kstatus_check)], input=json.dumps(listing), capture_output=True, text=True,
                              check=False, timeout=60)
        assert done.returncode == 0, f"kstatus-check exited {done.returncode}: {done.stderr}"
        verdicts = [json.loads(line) for line in done.stdout.splitlines()]
        return dict(zip(self.objects, verdicts, strict=True))

    def argocd(self) -> dict[str, dict[str, Any]]:
        files = []
        for capture, obj in self.objects.items():
            path = self.tmp_path / f"{capture}.json"
            path.write_text(json.dumps(obj))
            files.append(str(path))
        done = subprocess.run([str(self.argocd_health_check), "eval", str(HEALTH_DIR / "health.lua"), *files],
                              capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 0, f"argocd-health-check exited {done.returncode}: {done.stderr}"
        verdicts = [json.loads(line) for line in done.stdout.splitlines()]
        return dict(zip(self.objects, verdicts, strict=True))

    def neutral(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The object as testdata: no managedFields, a fixed namespace, artifact URIs without this machine's
        temporary directory."""
        text = json.dumps(obj).replace(self.tmp_path.as_uri(), "file:///models")
        text = text.replace(f'"{obj["metadata"]["namespace"]}"', '"models"')
        clean: dict[str, Any] = json.loads(text)
        clean["metadata"].pop("managedFields", None)
        return clean


def judge(captures: Captures) -> None:
    kstatus, argocd = captures.kstatus(), captures.argocd()
    rows = []
    wrong = []
    for capture, obj in captures.objects.items():
        want = EXPECTED[capture]
        status = MLModelStatus.model_validate(obj.get("status") or {})
        true = [c for c in status.conditions if c.type in ("Ready", "Reconciling", "Stalled") and c.status == "True"]
        reason = true[0].reason if len(true) == 1 else ""
        got = (status.phase, kstatus[capture]["status"], argocd[capture]["status"], reason)
        rows.append((capture, status.phase or "-", f"{obj['metadata']['generation']}/{status.observed_generation}",
                     "+".join(c.type for c in true) or "-", reason or "-", kstatus[capture]["status"],
                     argocd[capture]["status"], kstatus[capture]["message"]))
        if got != (want.phase, want.kstatus, want.argocd, want.reason):
            wrong.append(f"{capture}: got phase/kstatus/argocd/reason {got}, want "
                         f"{(want.phase, want.kstatus, want.argocd, want.reason)}")
    header = ("capture", "phase", "gen/observed", "True condition", "reason", "kstatus", "Argo CD", "kstatus message")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("\nkstatus (sigs.k8s.io/cli-utils) and Argo CD health (gopher-lua) per phase, on objects from the API "
          "server:")
    for row in [header, *rows]:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
    if WRITE_TESTDATA:
        for capture, obj in captures.objects.items():
            (HEALTH_DIR / "testdata" / f"{capture}.yaml").write_text(
                yaml.safe_dump(captures.neutral(obj), sort_keys=False))
    assert not wrong, "\n".join(wrong)


def approve(api_clients: dict[str, client.ApiClient], namespace: str, model: str, version: str, sha: str) -> None:
    for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
        Models(api_clients[user], namespace).approve(approval(model, version, sha, role, user))


def act(cluster: Cluster, user: str, verb: str, name: str, namespace: str) -> None:
    """A ModelAction filed with the CLI as ``user`` (the annotations that used to do this decide nothing)."""
    done = cli(cluster, user, verb, name, "-n", namespace)
    assert done.returncode == 0, done.stderr


def ready(s: MLModelStatus) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in s.conditions)


def until_phase(op: InProcessOperator, name: str, phase: str, extra: Callable[[MLModelStatus], bool] = lambda s: True,
                ) -> MLModelStatus:
    return op.until(name, lambda s: s.phase == phase and extra(s))


def test_each_phase_as_flux_and_argocd_see_it(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path,
        kstatus_check: Path, argocd_health_check: Path) -> None:
    op = InProcessOperator(modelwarden_installed, namespace)
    admin = Models(api_clients["admin"], namespace)
    captures = Captures(admin, tmp_path, kstatus_check, argocd_health_check)
    uri = {}
    sha = {}
    for version in ("v1", "v2"):
        uri[version], sha[version] = artifact(tmp_path, version)

    # One model through its life: created → awaiting approval → stable → a new revision → timed pause →
    # manual step → promoted → manual rollback → halted → kill switch.
    steps = [{"setWeight": 50, "pauseSeconds": 3600}, {"setWeight": 100}]
    admin.create(mlmodel("life", "v1", uri["v1"], sha["v1"], steps=steps))
    captures.take("created-not-yet-reconciled", "life")
    until_phase(op, "life", Phase.AWAITING_APPROVAL)
    captures.take("awaiting-approval", "life")
    approve(api_clients, namespace, "life", "v1", sha["v1"])
    until_phase(op, "life", Phase.STABLE, ready)
    captures.take("stable", "life")
    op.passes("life", 3)
    assert admin.get("life")["metadata"]["resourceVersion"] == captures.objects["stable"]["metadata"][
        "resourceVersion"], "a settled model's status (with its kstatus conditions) is not rewritten every pass"
    approve(api_clients, namespace, "life", "v2", sha["v2"])
    admin.patch_spec("life", {"version": "v2", "artifact": {"uri": uri["v2"], "sha256": sha["v2"]}})
    captures.take("new-generation-not-yet-observed", "life")
    until_phase(op, "life", Phase.PROGRESSING, lambda s: s.step_started_at is not None)
    captures.take("progressing-timed-pause", "life")
    op.now += dt.timedelta(seconds=3601)
    paused = until_phase(op, "life", Phase.PAUSED)
    captures.take("paused-awaiting-promote", "life")
    assert paused.current_step_index is not None
    act(modelwarden_installed, "finance-approver", "promote", "life", namespace)
    until_phase(op, "life", Phase.STABLE, lambda s: ready(s) and s.stable is not None and s.stable.version == "v2")
    act(modelwarden_installed, "oncall", "rollback", "life", namespace)
    until_phase(op, "life", Phase.ROLLING_BACK)
    captures.take("rolling-back", "life")
    halted = until_phase(op, "life", Phase.HALTED)
    assert halted.stable is not None and halted.stable.sha256 == sha["v1"]
    captures.take("halted-manual-rollback", "life")
    op.passes("life", 3)
    assert admin.get("life")["metadata"]["resourceVersion"] == captures.objects["halted-manual-rollback"][
        "metadata"]["resourceVersion"], "a halted model's status is not rewritten every pass"
    assert admin.get("life")["spec"]["version"] == "v2", "the operator never rewrites spec"
    admin.patch_spec("life", {"enabled": False})
    until_phase(op, "life", Phase.DISABLED)
    captures.take("disabled-kill-switch", "life")

    # An artifact that is not what its sha256 says.
    admin.create(mlmodel("tampered", "v1", uri["v1"], "e" * 64))
    approve(api_clients, namespace, "tampered", "v1", "e" * 64)
    until_phase(op, "tampered", Phase.FAILED)
    captures.take("sha256-mismatch", "tampered")

    # A rollback with nothing approved before the current version.
    admin.create(mlmodel("orphan", "v1", uri["v1"], sha["v1"]))
    approve(api_clients, namespace, "orphan", "v1", sha["v1"])
    until_phase(op, "orphan", Phase.STABLE, ready)
    act(modelwarden_installed, "oncall", "rollback", "orphan", namespace)
    until_phase(op, "orphan", Phase.HALTED)
    captures.take("halted-no-rollback-target", "orphan")

    # Hour 25: the CRD's pattern admits five fields; only the operator's parser knows better.
    admin.create(mlmodel("schedule", "v1", uri["v1"], sha["v1"], retraining={
        "enabled": True, "schedule": "0 25 * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "train", "image": "train:dev"}]}}}}}))
    approve(api_clients, namespace, "schedule", "v1", sha["v1"])
    until_phase(op, "schedule", Phase.STABLE, lambda s: any(c.type == "Stalled" and c.status == "True"
                                                            for c in s.conditions))
    captures.take("invalid-schedule", "schedule")

    judge(captures)


def test_halted_by_the_error_budget_as_flux_and_argocd_see_it(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path,
        prometheus_factory: Callable[..., Prometheus], kstatus_check: Path, argocd_health_check: Path) -> None:
    """The automatic rollback of issue 17's story: v2's budget below 5% for 16 minutes on a real Prometheus."""
    op = InProcessOperator(modelwarden_installed, namespace)
    admin, _ = promoted_v2(op, api_clients, namespace, tmp_path)
    op.evaluate(prometheus_factory(backfilled=[budget_series("v2", 16)]).url)
    op.until("m", lambda s: s.phase == Phase.HALTED)
    captures = Captures(admin, tmp_path, kstatus_check, argocd_health_check)
    captures.take("halted-error-budget", "m")
    assert admin.get("m")["spec"]["version"] == "v2", "the operator never rewrites spec"
    judge(captures)


def test_a_pruned_approval_rolls_nothing_back(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    """What Flux does when a commit removes a ModelApproval file (prune): it deletes the object. For the serving
    version nothing changes; during a canary the canary stops and the stable keeps all traffic — no rollback."""
    op = InProcessOperator(modelwarden_installed, namespace)
    admin = Models(api_clients["admin"], namespace)
    uri, sha = {}, {}
    for version in ("v1", "v2"):
        uri[version], sha[version] = artifact(tmp_path, version)
    admin.create(mlmodel("m", "v1", uri["v1"], sha["v1"], steps=[{"setWeight": 50}, {"setWeight": 100}]))
    approve(api_clients, namespace, "m", "v1", sha["v1"])
    until_phase(op, "m", Phase.STABLE, ready)
    before = admin.get("m")["metadata"]["resourceVersion"]

    admin.custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.APPROVAL_PLURAL,
                                                 "m-v1-finance-finance-approver")
    status = op.passes("m", 3)
    assert status.phase == Phase.STABLE and ready(status)
    assert admin.get("m")["metadata"]["resourceVersion"] == before, "not even a status write"

    approve(api_clients, namespace, "m", "v2", sha["v2"])
    admin.patch_spec("m", {"version": "v2", "artifact": {"uri": uri["v2"], "sha256": sha["v2"]}})
    until_phase(op, "m", Phase.PAUSED)
    assert admin.deployment("m-canary") is not None
    admin.custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.APPROVAL_PLURAL,
                                                 "m-v2-regulatory-regulatory-approver")
    status = until_phase(op, "m", Phase.AWAITING_APPROVAL, lambda s: s.canary is None)
    op.passes("m", 2)
    assert admin.deployment("m-canary") is None, "the unapproved canary is gone"
    stable = admin.deployment("m-stable")
    assert stable is not None and stable.spec.template.metadata.annotations["modelwarden.io/sha256"] == sha["v1"]
    assert status.halt is None and status.last_rollback is None and status.incidents == []
    reconciling = next(c for c in status.conditions if c.type == "Reconciling")
    assert (reconciling.status, reconciling.reason) == ("True", "AwaitingApproval")
    assert "waiting for regulatory approval of v2" in reconciling.message
    assert not [e for e in admin.events("m") if e.reason in ("RollbackStarted", "RollbackComplete")]
