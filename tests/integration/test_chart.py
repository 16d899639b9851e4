"""The Helm chart and the kustomize overlays, checked by the real tools against the real API server.

- ``helm lint --strict`` and ``helm template`` (helm built from the Go module proxy by ``hack/build-helm.sh``;
  if it cannot be built the tests fail and say why) over the default, single-namespace, monitoring-enabled and
  everything-off value sets;
- every rendered object, and every object of ``kubectl kustomize`` of the base and both overlays, accepted by
  the local kube-apiserver (server-side dry-run, as admin). PrometheusRule and ServiceMonitor are validated
  against the real prometheus-operator CRDs (from the ``prometheus-operator`` Go module), installed if absent;
- every PromQL expression of the rules (``promtool check rules``) and of the dashboards (a real Prometheus'
  query endpoint) parses, and names only metrics the servers export or the rules record.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localenv import prometheus as prometheus_env
from localenv._proc import (
    EnvironmentStartError,
    free_port,
    log_tail,
    require_debian_package,
    run,
    start_process,
    stop_pid,
    wait_until,
)
from localenv.cluster import K8S_VERSION, Cluster
from modelwarden.api.v1alpha1 import Phase
from modelwarden.handlers.settings import ENV
from tests.integration.modelwarden_helpers import Models, approval, artifact, mlmodel

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelwarden"
RULES = ROOT / "manifests" / "prometheus" / "rules.yaml"
DASHBOARDS = sorted((ROOT / "manifests" / "grafana").glob("*.json"))
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
MONITORING_CRDS = ("monitoring.coreos.com_prometheusrules.yaml", "monitoring.coreos.com_servicemonitors.yaml")

# What the inference server exports (DESIGN §4; model_server/metrics.py). The rules' recorded series are added
# from rules.yaml itself.
EXPORTED = {
    "ml_inference_requests_total", "ml_inference_latency_seconds_bucket", "ml_model_errors_total",
    "ml_feedback_labels_total", "ml_feature_drift_psi", "ml_governance_state", "ml_model_info",
    "ml_slo_objective_ratio",
    # the shadow stage (issue 20)
    "ml_shadow_mirrored_total", "ml_shadow_compared_total", "ml_shadow_agreements_total",
    "ml_shadow_score_difference_bucket", "ml_shadow_score_psi", "ml_shadow_errors_total",
}

# A cold helm build (and a cold cluster) takes longer than the suite's default 600 s.
pytestmark = pytest.mark.timeout(2400)


# --- tools ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def helm() -> Path:
    """The pinned helm, built (once, cached outside the repository) by hack/build-helm.sh. Never skips."""
    try:
        done = subprocess.run(["bash", str(ROOT / "hack" / "build-helm.sh")], capture_output=True, text=True,
                              check=False, timeout=2000)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hack/build-helm.sh did not finish in {e.timeout:.0f}s; run it by hand to see its progress")
    tail = "\n".join(done.stderr.splitlines()[-30:])
    if done.returncode != 0:
        pytest.fail(f"helm could not be built: hack/build-helm.sh exited {done.returncode}:\n{tail}")
    lines = done.stdout.strip().splitlines()
    path = Path(lines[-1]) if lines else Path()
    if not lines or not path.is_file():
        pytest.fail(f"hack/build-helm.sh printed no helm binary path (stdout {done.stdout!r}):\n{tail}")
    return path


def _helm(helm: Path, *args: str) -> str:
    done = subprocess.run([str(helm), *args], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, f"helm {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _dry_run(cluster: Cluster, objects: list[dict[str, Any]], what: str) -> None:
    """Every object through the API server's validation and admission, persisting nothing."""
    stream = "\n---\n".join(json.dumps(o) for o in objects)
    done = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts",
                           "--field-manager=modelwarden-chart-test", "-f", "-", input=stream, check=False)
    assert done.returncode == 0, f"{what}: the API server refused:\n{done.stderr}\n{done.stdout}"
    accepted = [line for line in done.stdout.splitlines() if "(server dry run)" in line]
    assert len(accepted) == len(objects), f"{what}: {len(objects)} objects, accepted:\n{done.stdout}"


def _get(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def _shipped_rbac() -> dict[str, list[dict[str, Any]]]:
    docs = [d for path in sorted((ROOT / "manifests" / "rbac").glob("*.yaml")) for d in _docs(path.read_text())]
    return {d["metadata"]["name"]: d["rules"] for d in docs if "rules" in d}


@pytest.fixture(scope="session")
def monitoring_crds(cluster: Cluster) -> Iterator[None]:
    """The real PrometheusRule and ServiceMonitor CRDs (prometheus-operator's, from the Go module proxy), so those
    kinds are validated like every other; removed afterwards if this test installed them."""
    out = run(["go", "mod", "download", "-json",
               f"github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}"],
              "downloading the prometheus-operator module (for its CRDs)")
    crd_dir = Path(json.loads(out)["Dir"]) / "example" / "prometheus-operator-crd"
    names = ["prometheusrules.monitoring.coreos.com", "servicemonitors.monitoring.coreos.com"]
    present = cluster.kubectl("get", "crd", *names, "--ignore-not-found", "-o", "name").stdout.split()
    installed = []
    for file, name in zip(MONITORING_CRDS, names, strict=True):
        if f"customresourcedefinition.apiextensions.k8s.io/{name}" not in present:
            cluster.kubectl("apply", "--server-side", "-f", str(crd_dir / file))
            installed.append(name)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
    yield
    if installed:
        cluster.kubectl("delete", "crd", *installed, "--ignore-not-found", "--wait=false", check=False)


@contextlib.contextmanager
def _namespaces(cluster: Cluster, objects: list[dict[str, Any]]) -> Iterator[None]:
    """Namespaced objects can only be dry-run into namespaces that exist: create the rendered Namespaces for real,
    and delete afterwards those this test created — except modelwarden-system, the project's own namespace
    (localenv installs the approval policy's parameters there; another run may be using it)."""
    names = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    created = []
    for name in names:
        if cluster.kubectl("get", "namespace", name, check=False).returncode != 0:
            cluster.kubectl("create", "namespace", name)
            created.append(name)
    try:
        yield
    finally:
        for name in created:
            if name != "modelwarden-system":
                cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# --- the chart -----------------------------------------------------------------------------------------------------

MONITORING = {"monitoring": {"prometheusRule": {"enabled": True}, "serviceMonitor": {"enabled": True},
                             "dashboards": {"enabled": True}},
              "config": {"prometheusUrl": "http://prometheus-operated.monitoring.svc:9090",
                         "grafanaUrl": "http://grafana.monitoring.svc:3000"},
              "secrets": {"existingSecret": "modelwarden-secrets"}}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "single-namespace": {"rbac": {"scope": "namespace"}},
    "monitoring": MONITORING,
    "minimal": {"admission": {"enabled": False, "approverGroups": {"finance": "x"}},
                "networkPolicy": {"enabled": False}, "rbac": {"createSharedClusterRoles": False},
                "serviceAccount": {"create": False, "name": "existing"}},
    # HA: two replicas are safe only with leader election (the schema refuses them without it).
    "ha": {"replicaCount": 2, "leaderElection": {"enabled": True}, "monitoring": {"serviceMonitor": {"enabled": True}}},
    "standalone": {"leaderElection": {"enabled": False}, "metrics": {"enabled": False}},
}


def _render(helm: Path, tmp_path: Path, namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    _helm(helm, "lint", "--strict", str(CHART), "-f", str(values_file), "--namespace", namespace,
          "--kube-version", K8S_VERSION)
    out = _helm(helm, "template", "modelwarden", str(CHART), "--namespace", namespace, "-f", str(values_file),
                "--include-crds", "--kube-version", K8S_VERSION)
    return _docs(out)


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_chart_lints_renders_and_every_object_is_accepted(
        value_set: str, helm: Path, cluster: Cluster, namespace: str, monitoring_crds: None, tmp_path: Path) -> None:
    objects = _render(helm, tmp_path, namespace, VALUE_SETS[value_set])
    kinds = {o["kind"] for o in objects}
    assert {"CustomResourceDefinition", "Deployment"} <= kinds
    if value_set == "monitoring":
        assert {"PrometheusRule", "ServiceMonitor"} <= kinds
    _dry_run(cluster, objects, f"chart with the {value_set} values")
    shipped = _shipped_rbac()

    # The Deployment: non-root, read-only root, resources, kopf liveness, settings by their real names.
    (deployment,) = _get(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    elected = value_set != "standalone"
    assert deployment["spec"]["replicas"] == (2 if value_set == "ha" else 1)
    # Standalone: never two at once, not even during an upgrade. Elected: the new pod waits for the Lease.
    assert deployment["spec"]["strategy"]["type"] == ("RollingUpdate" if elected else "Recreate")
    assert env["MODELWARDEN_LEADER_ELECTION"]["value"] == str(elected).lower()
    leader_roles = [o for o in _get(objects, "Role") if o["metadata"]["name"].endswith("-leader-election")]
    if elected:
        lease = env["MODELWARDEN_LEASE_NAME"]["value"]
        assert env["MODELWARDEN_LEASE_NAMESPACE"]["value"] == namespace and lease == "modelwarden-operator"
        (leader_role,) = leader_roles
        assert leader_role["metadata"]["namespace"] == namespace
        assert leader_role["rules"] == shipped["modelwarden-operator-leader-election"]
        (leader_binding,) = _get(objects, "RoleBinding", leader_role["metadata"]["name"])
        assert leader_binding["subjects"][0]["name"] == pod["serviceAccountName"]
    else:
        assert not leader_roles and "MODELWARDEN_LEASE_NAME" not in env
    metrics_on = value_set != "standalone"
    assert (f"--metrics-address={'0.0.0.0:8080' if metrics_on else ''}") in container["args"]
    assert ({"name": "metrics", "containerPort": 8080, "protocol": "TCP"} in container["ports"]) is metrics_on
    if value_set in ("ha", "monitoring"):
        (service,) = _get(objects, "Service")
        (monitor,) = _get(objects, "ServiceMonitor", "modelwarden-operator")
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "operator-metrics"
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["command"] == ["python", "-m", "modelwarden.handlers"]
    assert "--liveness=http://0.0.0.0:8081/healthz" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    env_names = {e["name"] for e in container["env"]} - {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    assert env_names <= set(ENV), env_names - set(ENV)
    assert pod["serviceAccountName"] == ("existing" if value_set == "minimal" else "modelwarden")

    if value_set == "single-namespace":
        assert f"--namespace={namespace}" in container["args"]
        assert not [o for o in _get(objects, "ClusterRole") if o["metadata"]["name"].endswith("-operator")]
        # issue 27: only the cluster-scoped ledger rights (checkpoints, TrustPolicy) are bound cluster-wide
        assert {o["metadata"]["name"].rsplit("-", 2)[-2] + "-" + o["metadata"]["name"].rsplit("-", 2)[-1]
                for o in _get(objects, "ClusterRoleBinding")} == {"operator-ledger", "policy-reader"}
        (role,) = _get(objects, "Role", "modelwarden-operator")
        assert role["metadata"]["namespace"] == namespace and role["rules"] == shipped["modelwarden-operator"]
        (binding,) = _get(objects, "RoleBinding", "modelwarden-operator")
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
    else:
        assert not [a for a in container["args"] if a.startswith("--namespace")]
        (role,) = _get(objects, "ClusterRole", "modelwarden-operator")
        assert role["rules"] == shipped["modelwarden-operator"]
        resources = {r for rule in role["rules"] for r in rule["resources"]}
        assert {"mlmodels/status", "mlmodels/finalizers"} <= resources
        (binding,) = [b for b in _get(objects, "ClusterRoleBinding")
                      if b["roleRef"]["name"] == role["metadata"]["name"]]
        assert binding["subjects"][0]["namespace"] == namespace
        (keys,) = _get(objects, "ClusterRole", "modelwarden-issuer-keys")
        assert keys["rules"] == [{"nonResourceURLs": ["/openid/v1/jwks"], "verbs": ["get"]}]
    (ledger_role,) = [o for o in _get(objects, "ClusterRole") if o["metadata"]["name"].endswith("-operator-ledger")]
    assert ledger_role["rules"] == shipped["modelwarden-operator-ledger"]
    (ledger_binding,) = [b for b in _get(objects, "ClusterRoleBinding")
                         if b["roleRef"]["name"] == ledger_role["metadata"]["name"]]
    assert ledger_binding["subjects"][0]["namespace"] == namespace

    if value_set == "minimal":
        assert not kinds & {"ValidatingAdmissionPolicy", "NetworkPolicy", "ServiceAccount", "PrometheusRule"}
        assert not _get(objects, "ClusterRole", "modelwarden-model-server")
        return
    for name in ("modelwarden-model-server", "modelwarden-approval-editor", "modelwarden-action-requester",
                 "modelwarden-ledger-reader"):
        assert _get(objects, "ClusterRole", name)[0]["rules"] == shipped[name]

    # The admission policies are the shipped ones, with the role -> group and verb -> groups mappings from values.
    (policy,) = [o for o in _get(objects, "ValidatingAdmissionPolicy")
                 if o["metadata"]["name"].endswith("-approval-identity")]
    shipped_policy = _get(_docs((ROOT / "manifests/admission/modelapproval-policy.yaml").read_text()),
                          "ValidatingAdmissionPolicy")[0]
    assert policy["spec"] == shipped_policy["spec"]
    (action_policy,) = [o for o in _get(objects, "ValidatingAdmissionPolicy")
                        if o["metadata"]["name"].endswith("-action-identity")]
    shipped_action = _get(_docs((ROOT / "manifests/admission/modelwarden-action-policy.yaml").read_text()),
                          "ValidatingAdmissionPolicy")[0]
    assert action_policy["spec"] == shipped_action["spec"]
    (vapb,) = [o for o in _get(objects, "ValidatingAdmissionPolicyBinding")
               if o["metadata"]["name"].endswith("-approval-identity")]
    (groups,) = [o for o in _get(objects, "ConfigMap") if o["metadata"]["name"] == vapb["spec"]["paramRef"]["name"]]
    assert vapb["spec"]["paramRef"]["namespace"] == namespace == groups["metadata"]["namespace"]
    assert groups["data"] == {"finance": "modelwarden:finance-approvers",
                              "regulatory": "modelwarden:regulatory-approvers"}
    assert _get(objects, "NetworkPolicy")

    if value_set == "monitoring":
        (rule,) = _get(objects, "PrometheusRule")
        assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
        boards = [o for o in _get(objects, "ConfigMap") if o["metadata"].get("labels", {}).get("grafana_dashboard")]
        titles = {json.loads(v)["title"] for cm in boards for v in cm["data"].values()}
        assert titles == {"ML Service Inference Overview", "Model Drift Deep Dive"}
        assert env["MODELWARDEN_PROMETHEUS_URL"]["value"] == MONITORING["config"]["prometheusUrl"]
        assert env["MODELWARDEN_FEEDBACK_DSN"]["valueFrom"]["secretKeyRef"]["name"] == "modelwarden-secrets"
    # No admin key: the operator calls the servers with TokenRequest tokens of its own ServiceAccount only.
    assert "MODELWARDEN_ADMIN_TOKEN" not in env and "MODELWARDEN_SERVER_FAULT_INJECTION" not in env
    assert env["MODELWARDEN_SERVICE_ACCOUNT"]["value"].endswith("/" + pod["serviceAccountName"])
    (token_role,) = [o for o in _get(objects, "Role") if o["metadata"]["name"].endswith("-token")]
    assert token_role["rules"] == [{"apiGroups": [""], "resources": ["serviceaccounts/token"],
                                    "resourceNames": [pod["serviceAccountName"]], "verbs": ["create"]}]


def test_the_dry_run_refuses_what_is_wrong(helm: Path, cluster: Cluster, namespace: str, monitoring_crds: None,
                                          tmp_path: Path) -> None:
    """The acceptance above means something: the same path refuses a broken object of each checked kind."""
    objects = _render(helm, tmp_path, namespace, MONITORING)
    broken = {
        "PrometheusRule": lambda o: o["spec"]["groups"][0]["rules"][0].update({"for": "not-a-duration"}),
        "ServiceMonitor": lambda o: o["spec"]["endpoints"][0].update({"interval": "fast"}),
        "Deployment": lambda o: o["spec"]["template"]["spec"]["containers"][0].update({"livenessProbes": {}}),
        "ValidatingAdmissionPolicy": lambda o: o["spec"]["validations"][0].update({"expression": "object.spec +"}),
    }
    for kind, breaking in broken.items():
        obj = _get(objects, kind)[0]
        breaking(obj)
        with pytest.raises(AssertionError, match="refused"):
            _dry_run(cluster, [obj], f"a broken {kind}")


@pytest.mark.parametrize(("values", "refusal"), [
    ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "leaderElection/enabled"),
    ({"leaderElection": {"renewDeadlineSeconds": 15}}, "leaseDurationSeconds > renewDeadlineSeconds"),
    ({"leaderElection": {"retryPeriodSeconds": 9}}, "1.2 x retryPeriodSeconds"),
    ({"extraEnv": [{"name": "MODELWARDEN_SERVER_FAULT_INJECTION", "value": "true"}]}, "never turns on fault injection"),
], ids=["two-standalone-replicas", "renew-deadline-not-below-lease", "retry-period-too-long",
        "fault-injection-through-extra-env"])
def test_chart_refuses_unsafe_replica_and_election_settings(helm: Path, tmp_path: Path, values: dict[str, Any],
                                                            refusal: str) -> None:
    """Two standalone kopf operators would both act on every model (the schema refuses it); election timings where a
    leader could still act after another took over are refused too."""
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    done = subprocess.run([str(helm), "template", "modelwarden", str(CHART), "-f", str(values_file)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode != 0 and refusal in done.stderr, done.stderr


def test_the_operator_runs_as_the_chart_says_with_only_the_single_namespace_role(
        helm: Path, modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    """The rendered Deployment's command, args and env, run as the rendered ServiceAccount holding nothing but the
    rendered single-namespace Role (and the cluster-scoped ledger rights), take a model through dual sign-off to
    Stable."""
    cluster = modelwarden_installed
    values = {"rbac": {"scope": "namespace", "createSharedClusterRoles": False}, "networkPolicy": {"enabled": False},
              "admission": {"enabled": False, "approverGroups": {"finance": "unused"}}}
    (tmp_path / "values.json").write_text(json.dumps(values))
    objects = _docs(_helm(helm, "template", "mwtest", str(CHART), "--namespace", namespace,
                          "-f", str(tmp_path / "values.json")))
    # issue 27: plus the cluster-scoped ledger rights (checkpoints, TrustPolicy) a Role cannot grant
    assert {o["kind"] for o in objects} == {"ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                                            "ClusterRoleBinding", "Deployment"}
    namespaced = [o for o in objects if o["kind"] != "Deployment"]
    cluster.kubectl("apply", "--server-side", "-f", "-", input="\n---\n".join(json.dumps(o) for o in namespaced))

    # A kubeconfig for the ServiceAccount, as its pod would have it.
    (sa,) = _get(objects, "ServiceAccount")
    token = cluster.kubectl("create", "token", sa["metadata"]["name"], "-n", namespace, "--duration=1h").stdout.strip()
    kubeconfig = yaml.safe_load(cluster.admin_kubeconfig.read_text())
    kubeconfig["users"] = [{"name": u["name"], "user": {"token": token}} for u in kubeconfig["users"]]
    (tmp_path / "sa.kubeconfig").write_text(yaml.safe_dump(kubeconfig))

    (deployment,) = _get(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port = free_port()
    metrics_port = free_port()
    args = [a.replace("http://0.0.0.0:8081/", f"http://127.0.0.1:{port}/")
            .replace("--metrics-address=0.0.0.0:8080", f"--metrics-address=127.0.0.1:{metrics_port}")
            for a in container["args"]]
    assert f"--namespace={namespace}" in args and f"--liveness=http://127.0.0.1:{port}/healthz" in args
    assert f"--metrics-address=127.0.0.1:{metrics_port}" in args
    command = [sys.executable if container["command"][0] == "python" else container["command"][0],
               *container["command"][1:], *args]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env |= {"KUBECONFIG": str(tmp_path / "sa.kubeconfig"), "MODELWARDEN_RESYNC_SECONDS": "10"}
    log_path = tmp_path / "operator.log"
    process = start_process(command, log_path, env=env, cwd=ROOT)
    try:
        def alive() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)

        wait_until(alive, timeout=60, what="the operator as the chart runs it", log_path=log_path, process=process)

        def running() -> None:
            assert process.poll() is None, f"the operator died:\n{log_tail(log_path, 40)}"

        admin = Models(api_clients["admin"], namespace)
        uri, sha = artifact(tmp_path, "v1")
        admin.create(mlmodel("chart", "v1", uri, sha))
        admin.wait_phase("chart", Phase.AWAITING_APPROVAL, check=running)
        Models(api_clients["finance-approver"], namespace).approve(
            approval("chart", "v1", sha, "finance", "finance-approver"))
        Models(api_clients["regulatory-approver"], namespace).approve(
            approval("chart", "v1", sha, "regulatory", "regulatory-approver"))
        admin.wait_phase("chart", Phase.STABLE, timeout=90, check=running)
        stable = admin.deployment("chart-stable")
        assert stable is not None and stable.spec.template.metadata.annotations["modelwarden.io/sha256"] == sha
        # Leader election on (the chart's default), with only the rendered leader-election Role for the Lease.
        assert env["MODELWARDEN_LEADER_ELECTION"] == "true" and env["MODELWARDEN_LEASE_NAMESPACE"] == namespace
        lease = client.CoordinationV1Api(api_clients["admin"]).read_namespaced_lease(
            env["MODELWARDEN_LEASE_NAME"], namespace)
        assert lease.spec.holder_identity and lease.spec.lease_duration_seconds == 15
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            scraped = resp.read().decode()
        assert "modelwarden_leader 1.0" in scraped and 'modelwarden_reconcile_total{result="success"}' in scraped
    finally:
        stop_pid(process.pid, timeout=15)
        process.wait()
    # kopf's own observation of namespaces and CRDs (cluster-scoped lists) is refused by design: kopf then falls back
    # to the namespaces it was given and the CRDs it found at start-up. Any other 403 is a missing permission.
    kopf_scanning = re.compile(r"GET \S+/(api/v1/namespaces|apis/apiextensions\.k8s\.io/v1/customresourcedefinitions)"
                               r"(\?\S*)? -> APIForbiddenError|Not enough permissions to (list|watch) (for )?"
                               r"(namespaces|resources)")
    # A status 403, not the digits of a log line's milliseconds (",403").
    status_403 = re.compile(r"(?<![\d,.:])403(?!\d)")
    forbidden = [line for line in log_path.read_text(errors="replace").splitlines()
                 if (status_403.search(line) or "orbidden" in line) and not kopf_scanning.search(line)]
    assert not forbidden, "the single-namespace Role lacks a permission:\n" + "\n".join(forbidden[:10])


def test_the_chart_installed_operator_runs_as_a_pod_on_the_real_node_and_serves_a_model(
        helm: Path, modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], real_namespace: str,
        tmp_path: Path, pods_feedback_store: dict[str, Any]) -> None:
    """Exactly as a user installs it: the chart's objects applied, the operator a pod from the locally built image
    (its in-cluster ServiceAccount, only the single-namespace Role, its Lease), in a namespace enforcing the
    `restricted` Pod Security level; it takes a model, whose artifact is served over HTTP, to Stable on real pods."""
    from localenv import images
    from localenv import node as real_node
    from localenv.artifacts import ArtifactServer
    from model_server.demo_artifact import build_demo_artifact

    cluster, namespace = modelwarden_installed, real_namespace
    values = {"rbac": {"scope": "namespace", "createSharedClusterRoles": False}, "networkPolicy": {"enabled": False},
              "admission": {"enabled": False, "approverGroups": {"finance": "unused"}},
              "config": {"resyncSeconds": 10}}
    (tmp_path / "values.json").write_text(json.dumps(values))
    objects = _docs(_helm(helm, "template", "mwpod", str(CHART), "--namespace", namespace,
                          "-f", str(tmp_path / "values.json")))
    (deployment,) = _get(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == images.OPERATOR_IMAGE, "the chart names the image the local environment builds"
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-",
                    input="\n---\n".join(json.dumps(o) for o in objects))
    core = client.CoreV1Api(api_clients["admin"])
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())

    def operator_ready() -> bool:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        return len(pods) == 1 and any(c.type == "Ready" and c.status == "True" for c in pods[0].status.conditions or [])

    try:
        wait_until(operator_ready, timeout=180, what="the operator pod Ready")
    except EnvironmentStartError:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        logs = [core.read_namespaced_pod_log(p.metadata.name, namespace, tail_lines=40) for p in pods
                if p.status.container_statuses]
        pytest.fail(f"the operator pod did not become Ready: {[p.status for p in pods]}\n{logs}")
    (operator_pod,) = core.list_namespaced_pod(namespace, label_selector=selector).items
    assert operator_pod.spec.node_name == real_node.NODE_NAME
    assert operator_pod.spec.service_account_name == _get(objects, "ServiceAccount")[0]["metadata"]["name"]

    demo = build_demo_artifact(tmp_path / "v1", model="podded", version="v1", n_features=3, rows=300)
    with ArtifactServer(tmp_path) as artifacts:
        admin = Models(api_clients["admin"], namespace)
        admin.create({
            "apiVersion": "modelwarden.io/v1alpha1", "kind": "MLModel", "metadata": {"name": "podded"},
            "spec": {"version": "v1",
                     "artifact": {"uri": artifacts.uri(demo.directory / demo.model_file), "sha256": demo.sha256},
                     "featureContract": {"name": demo.contract, "features": list(demo.features),
                                         "nFeatures": len(demo.features)},
                     "serving": {"replicas": 1, "feedbackStore": pods_feedback_store}}})
        Models(api_clients["finance-approver"], namespace).approve(
            approval("podded", "v1", demo.sha256, "finance", "finance-approver"))
        Models(api_clients["regulatory-approver"], namespace).approve(
            approval("podded", "v1", demo.sha256, "regulatory", "regulatory-approver"))
        admin.wait_phase("podded", Phase.STABLE, timeout=240)
    stable = admin.deployment("podded-stable")
    assert stable is not None and stable.status.ready_replicas == 1
    lease_name = {e["name"]: e.get("value") for e in container["env"]}["MODELWARDEN_LEASE_NAME"]
    lease = client.CoordinationV1Api(api_clients["admin"]).read_namespaced_lease(lease_name, namespace)
    assert lease.spec.holder_identity and operator_pod.metadata.name in lease.spec.holder_identity
    log = core.read_namespaced_pod_log(operator_pod.metadata.name, namespace)
    kopf_scanning = re.compile(r"GET \S+/(api/v1/namespaces|apis/apiextensions\.k8s\.io/v1/customresourcedefinitions)"
                               r"(\?\S*)? -> APIForbiddenError|Not enough permissions to (list|watch) (for )?"
                               r"(namespaces|resources)")
    forbidden = [line for line in log.splitlines() if ("403" in line or "orbidden" in line)
                 and not kopf_scanning.search(line)]
    assert not forbidden, "the chart's Role lacks a permission:\n" + "\n".join(forbidden[:10])


# --- kustomize -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("directory", ["base", "overlays/single-namespace", "overlays/monitoring"])
def test_kustomize_builds_and_every_object_is_accepted(directory: str, cluster: Cluster,
                                                       monitoring_crds: None) -> None:
    objects = _docs(cluster.kubectl("kustomize", str(ROOT / "manifests" / directory)).stdout)
    (deployment,) = _get(objects, "Deployment", "modelwarden-operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "--liveness=http://0.0.0.0:8081/healthz" in args and "--metrics-address=0.0.0.0:8080" in args
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert {e["name"]: e.get("value") for e in container["env"]}["MODELWARDEN_LEADER_ELECTION"] == "true"
    env_names = {e["name"] for e in container["env"]} - {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    assert env_names <= set(ENV), env_names - set(ENV)
    shipped = _shipped_rbac()
    if directory.endswith("single-namespace"):
        assert "--namespace=ml-models" in args
        assert not _get(objects, "ClusterRole", "modelwarden-operator")
        # issue 27: only the cluster-scoped ledger rights (checkpoints, TrustPolicy) are bound cluster-wide
        assert {b["metadata"]["name"] for b in _get(objects, "ClusterRoleBinding")} == {
            "modelwarden-operator-ledger", "modelwarden-trust-policy-reader"}
        (role,) = _get(objects, "Role", "modelwarden-operator")
        assert role["rules"] == shipped["modelwarden-operator"]
    else:
        assert _get(objects, "ClusterRole", "modelwarden-operator")[0]["rules"] == shipped["modelwarden-operator"]
    (leader_role,) = _get(objects, "Role", "modelwarden-operator-leader-election")
    assert leader_role["rules"] == shipped["modelwarden-operator-leader-election"]
    assert _get(objects, "RoleBinding", "modelwarden-operator-leader-election")
    if directory.endswith("monitoring"):
        assert _get(objects, "ServiceMonitor", "modelwarden-operator") and _get(objects, "Service")
        assert _get(objects, "PrometheusRule") and _get(objects, "ServiceMonitor")
        boards = [o for o in _get(objects, "ConfigMap") if "grafana_dashboard" in o["metadata"].get("labels", {})]
        assert len(boards) == 2
    with _namespaces(cluster, objects):
        _dry_run(cluster, objects, f"kubectl kustomize manifests/{directory}")


# --- PromQL --------------------------------------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, label matchers, ranges, grouping clauses and
    function calls removed; what is left that looks like an identifier is a metric name)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", "{}", s)
    s = re.sub(r"\[[^\]]*\]", "[]", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.])[a-zA-Z_:][\w:]*", s):
        if s[m.end():].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def test_metric_names_extraction() -> None:
    assert metric_names('sum by (le, model) (rate(ml_x_bucket{a=~"b|c", d!="e"}[5m])) / on (m) group_left () '
                        "(1 - max by (m) (ml:y:rate5m offset 1h)) > 14.4 and bool 1e3") == {"ml_x_bucket",
                                                                                          "ml:y:rate5m"}
    assert metric_names("count(ml_a > 0.25) or vector(0)") == {"ml_a"}


def _rules_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def _recorded() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def _dashboard_exprs() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())

        def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for p in items:
                yield p
                yield from panels(p.get("panels", []))

        for panel in panels(board["panels"]):
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["expr"]))
    return out


def _grafana_to_promql(expr: str) -> str:
    """Grafana's template variables as Prometheus sees them once Grafana has interpolated them."""
    for var, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h")):
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def test_rules_pass_promtool_check() -> None:
    promtool = require_debian_package("promtool", "prometheus")
    check = subprocess.run([str(promtool), "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_promql_expression_parses_and_names_only_our_metrics(
        prometheus_factory: Callable[..., prometheus_env.Prometheus]) -> None:
    allowed = EXPORTED | _recorded()
    assert {"ml_inference_error_budget_remaining"} <= allowed
    exprs = [("rules.yaml", "rule", e) for e in _rules_exprs()] + _dashboard_exprs()
    assert len([e for e in exprs if e[0] != "rules.yaml"]) >= 20, "the dashboards hold fewer queries than expected"
    prom = prometheus_factory()
    failures = []
    for source, title, expr in exprs:
        promql = _grafana_to_promql(expr)
        url = f"{prom.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            failures.append(f"{source} / {title}: {body.get('error')}\n  {promql}")
        names = metric_names(promql)
        if not names:
            failures.append(f"{source} / {title}: selects no metric\n  {promql}")
        if names - allowed:
            failures.append(f"{source} / {title}: unknown metrics {sorted(names - allowed)}\n  {promql}")
    assert not failures, "\n".join(failures)
