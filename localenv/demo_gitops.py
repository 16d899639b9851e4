"""`python -m localenv.demo --gitops`: the same story driven only by Git commits that a real Flux applies.

Flux's source-controller and kustomize-controller (built from the Go module proxy) run on the host against the
local cluster; a Git repository is served on loopback. Every change is a commit: v1 with its two approvals, v2
with its two, a fixed v3, an approval withdrawn, the model removed. Errors injected into v2's canary pods roll
back to v1 with nobody acting; Flux reports the MLModel's ``Stalled`` reason and does not fight the rollback (its
applies and the operator's writes are counted from kustomize-controller's log and a watch on the MLModel).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from localenv import flux as flux_env
from localenv.artifacts import ArtifactServer
from localenv.demo import (
    MODEL,
    LoadGenerator,
    inject_faults,
    mlmodel_body,
    model_pods,
    model_status,
    say,
    stack,
    start_cluster,
    start_platform,
    status_line,
    wait_for,
)
from modelwarden.api import v1alpha1 as api

MODEL_FILE = f"models/{MODEL}.yaml"


def get_model(custom: client.CustomObjectsApi, namespace: str) -> Any:
    return custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL, MODEL)


def config_maps(core: client.CoreV1Api, namespace: str) -> set[str]:
    items: list[Any] = core.list_namespaced_config_map(namespace).items
    return {c.metadata.name for c in items}


def listing(custom: client.CustomObjectsApi, namespace: str, plural: str) -> list[Any]:
    result: Any = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, plural)
    return list(result["items"])


def approval_files(version: str, sha256: str, roles: tuple[str, ...] = ("finance", "regulatory")) -> dict[str, Any]:
    return {f"approvals/{role}/{MODEL}-{version}.yaml": {
        "apiVersion": api.API_VERSION, "kind": "ModelApproval", "metadata": {"name": f"{MODEL}-{version}-{role}"},
        "spec": {"modelRef": {"name": MODEL}, "version": version, "sha256": sha256, "role": role,
                 "approver": flux_env.APPROVERS[role]}} for role in roles}


def run_gitops(keep: bool) -> int:
    from model_server.demo_artifact import build_demo_artifact, train

    started = time.monotonic()
    with stack(keep) as parts:
        work: Path = parts["work"]
        say("1/8 local Kubernetes control plane and its real node")
        cluster, core, custom, namespace = start_cluster(parts)

        say("2/8 three model versions (ONNX + manifest.json), served over HTTP for the pods to fetch")
        v1 = build_demo_artifact(work / "v1", fmt="onnx", model=MODEL, version="v1",
                                 trained=train("logistic", 8, 800, 1))
        v2 = build_demo_artifact(work / "v2", fmt="onnx", model=MODEL, version="v2",
                                 trained=train("logistic", 8, 800, 2), previous=v1.manifest)
        v3 = build_demo_artifact(work / "v3", fmt="onnx", model=MODEL, version="v3",
                                 trained=train("logistic", 8, 800, 3), previous=v1.manifest)
        for v in (v1, v2, v3):
            say(f"    {v.manifest.version}: sha256 {v.sha256}")
        features = list(v1.features)
        artifacts = ArtifactServer(work)
        parts["artifacts"] = artifacts

        say("3/8 Prometheus with the shipped rules, PostgreSQL for feedback, the operator from the Helm chart")
        start_platform(cluster, core, namespace, work, parts)

        say(f"4/8 Flux {flux_env.SOURCE_CONTROLLER_VERSION} (source-controller, kustomize-controller) as host "
            "processes, each as its own ServiceAccount; a Git repository on loopback")
        flux_env.install(cluster)
        controllers = flux_env.start(cluster, work / "flux")
        git = flux_env.GitServer(work / "git")
        parts["flux"], parts["git"] = controllers, git
        repo = flux_env.GitRepo(git, "models")
        synced = flux_env.sync(cluster, namespace, repo.url)
        if not keep:  # removed at the end (with prune: the MLModel too), before the controllers stop
            parts["flux_sync"] = synced
        say(f"    {repo.url}: ./models applied as {namespace}/{flux_env.APPLIER} (prune, wait); ./approvals/<role> "
            "as each approver")

        def body(version: str, artifact: Any) -> dict[str, Any]:
            return mlmodel_body(version, artifacts.uri(artifact.directory / artifact.model_file), artifact.sha256,
                                features, "ErrorBudgetExhausted")

        def kustomization() -> tuple[str, str, str]:
            return flux_env.ready(flux_env.kustomization(cluster, namespace, "models"))

        def line() -> str:
            k = kustomization()
            return f"{status_line(custom, namespace, parts.get('load'))}; Kustomization Ready={k[0]} {k[1]}"

        latencies: list[tuple[float, float]] = []

        def commit(files: dict[str, Any], message: str) -> str:
            """Commit, and time Flux's apply (``metadata.generation`` moves) and the operator's answer
            (``status.observedGeneration`` catches up)."""
            try:
                before = get_model(custom, namespace)["metadata"]["generation"]
            except client.ApiException:
                before = 0
            t0 = time.monotonic()
            sha = repo.commit(files, message)
            say(f"    $ git commit -m {message!r}  → {sha[:12]}")
            if MODEL_FILE not in files or files[MODEL_FILE] is None:
                return sha

            def generation() -> tuple[int, int]:
                obj: Any = get_model(custom, namespace)
                return int(obj["metadata"]["generation"]), int((obj.get("status") or {}).get("observedGeneration")
                                                               or 0)

            def moved() -> bool:
                try:
                    return bool(generation()[0] > before)
                except client.ApiException:
                    return False

            applied = time.monotonic() - t0 + wait_for("Flux applied the commit", moved, 120)
            acted = wait_for("the operator observed it", lambda: generation()[1] >= generation()[0], 120)
            latencies.append((applied, applied + acted))
            say(f"    Flux applied it {applied:.1f}s after the commit; the operator acted {applied + acted:.1f}s "
                "after it")
            return sha

        say(f"5/8 commit MLModel {MODEL} v1 and its two approvals (finance, regulatory)")
        # models/ keeps a file besides the MLModels: a path that is gone fails the Kustomization (no prune).
        commit({"models/README.md": "MLModels here are applied by Flux.", MODEL_FILE: body("v1", v1),
                **approval_files("v1", v1.sha256)}, "fraud-scorer v1, approved")
        writes = flux_env.Writes(custom, namespace, MODEL).start()
        parts["writes"] = writes
        wait_for("v1 Stable", lambda: model_status(custom, namespace).phase == api.Phase.STABLE, 300, line)
        wait_for("Kustomization Ready", lambda: kustomization()[0] == "True", 120, line)
        say(f"    {line()}")
        service: Any = core.read_namespaced_service(MODEL, namespace)
        load = LoadGenerator(f"http://{service.spec.cluster_ip}:8080", features)
        load.start()
        parts["load"] = load
        wait_for("v1 serving", lambda: load.serving() == {v1.sha256} and len(load.recent) >= 50, 90, line)
        say(f"    load through Service {MODEL} ({service.spec.cluster_ip}:8080): {load.split()}")

        say("6/8 commit v2 and its approvals → canary; then errors injected into the canary's pods")
        commit({MODEL_FILE: body("v2", v2), **approval_files("v2", v2.sha256)}, "fraud-scorer v2, approved")
        wait_for("canary answering", lambda: v2.sha256 in load.serving(), 300, line)
        generation_before: int = get_model(custom, namespace)["metadata"]["generation"]
        hit = inject_faults(cluster, core, namespace, "canary")
        say(f"    faults set on {', '.join(hit)} (half their requests fail); nobody acts")
        halted = wait_for("automatic rollback", lambda: model_status(custom, namespace).phase == api.Phase.HALTED,
                          300, line)
        status = model_status(custom, namespace)
        stalled = next(c for c in status.conditions if c.type == "Stalled")
        failed = wait_for("Kustomization failed", lambda: kustomization()[0] == "False", 120, line)
        k_status, k_reason, k_message = kustomization()
        say(f"    halted {halted:.0f}s after the injection; the Kustomization failed {failed:.0f}s after the halt")
        print(f"\nMLModel Stalled: {stalled.reason} — {stalled.message}", flush=True)
        print(f"Kustomization models: Ready={k_status} {k_reason} — {k_message}", flush=True)
        wait_for("v1 serving again", lambda: load.serving() == {v1.sha256}, 120, line)
        say("    watching 30 s for a correction loop (source-controller polls every "
            f"{flux_env.GIT_POLL_INTERVAL}, the Kustomization retries every 10 s)")
        time.sleep(30)
        obj: Any = get_model(custom, namespace)
        generation_after = obj["metadata"]["generation"]
        applies = controllers.applies("MLModel", namespace, MODEL)
        flux_writes = [a for a in applies if a != "unchanged"]
        print(f"\nGeneration before the injection {generation_before}, after the rollback {generation_after}; "
              f"spec.version {obj['spec']['version']}; spec owned by {sorted(flux_env.spec_owners(obj))}", flush=True)
        print(f"Flux: {len(applies)} server-side applies of the MLModel, {len(flux_writes)} that changed it "
              f"{flux_writes}; operator: {writes.counts['status']} status writes, spec writes "
              f"{writes.counts['spec'] - (len(flux_writes) - 1)}", flush=True)
        served = load.serving()
        rolled_back = served == {v1.sha256}

        say("7/8 commit a fixed v3 (with approvals) → the rollout resumes; then withdraw an approval of v3")
        commit({MODEL_FILE: body("v3", v3), **approval_files("v3", v3.sha256)}, "fraud-scorer v3: the fix")
        wait_for("v3 Stable", lambda: (lambda s: s.phase == api.Phase.STABLE and s.stable is not None
                                       and s.stable.version == "v3")(model_status(custom, namespace)), 420, line)
        wait_for("Kustomization Ready", lambda: kustomization()[0] == "True", 180, line)
        wait_for("v3 serving", lambda: load.serving() == {v3.sha256}, 120, line)
        say(f"    {line()}")
        # What a withdrawn approval must not cause: a spec write (Flux) or a rollback. Status writes go on (the
        # operator records the budget it reads from the live Prometheus).
        generation_v3 = get_model(custom, namespace)["metadata"]["generation"]
        rollback_before = model_status(custom, namespace).last_rollback
        commit({f"approvals/finance/{MODEL}-v3.yaml": None}, "withdraw finance's approval of v3")
        wait_for("approval pruned", lambda: f"{MODEL}-v3-finance" not in {
            a["metadata"]["name"] for a in listing(custom, namespace, api.APPROVAL_PLURAL)}, 60)
        time.sleep(15)
        after = model_status(custom, namespace)
        still_v3 = after.phase == api.Phase.STABLE and load.serving() == {v3.sha256}
        unchanged = get_model(custom, namespace)["metadata"]["generation"] == generation_v3
        rolled_back_again = after.last_rollback != rollback_before
        print(f"\nApproval withdrawn: phase {after.phase}, serving {sorted(load.serving())[0][:12]}… (v3), MLModel "
              f"spec {'not written' if unchanged else 'written'}; rollbacks since: "
              f"{'one' if rolled_back_again else 'none'}", flush=True)

        say("8/8 commit removing the MLModel (prune: true) → Flux deletes it")
        incidents = sorted(n for n in config_maps(core, namespace) if n.startswith(f"{MODEL}-rb-"))
        writes.stop()
        counts = dict(writes.counts)
        commit({MODEL_FILE: None}, "retire fraud-scorer")

        def gone() -> bool:
            try:
                get_model(custom, namespace)
            except client.ApiException:
                return not model_pods(core, namespace)
            return False

        wait_for("MLModel and its pods gone", gone, 180)
        left = config_maps(core, namespace)
        ledger = listing(custom, namespace, api.LEDGER_PLURAL)
        print(f"Pruned: MLModel deleted, its pods gone; incident ConfigMaps {incidents} "
              f"{'kept' if set(incidents) <= left else 'deleted with it (owner references)'}; decision ledger: "
              f"{len(ledger)} segment(s) kept", flush=True)
        load.stop()

        applies = controllers.applies("MLModel", namespace, MODEL)
        print(f"\nCounts: Flux applied the MLModel {len([a for a in applies if a != 'unchanged'])} times "
              f"({applies.count('unchanged')} reconciliations found nothing to change); writes seen on the MLModel: "
              f"{json.dumps(counts)}", flush=True)
        applied_s = statistics.median(a for a, _ in latencies)
        acted_s = statistics.median(b for _, b in latencies)
        print(f"commit → Flux applied p50 {applied_s:.1f}s, → operator acted p50 {acted_s:.1f}s "
              f"(over {len(latencies)} commits)", flush=True)
        say(f"done in {time.monotonic() - started:.0f}s")
        ok = (rolled_back and generation_after == generation_before and counts["spec"] == 2 and still_v3
              and unchanged and not rolled_back_again and k_status == "False"
              and f"MLModel/{namespace}/{MODEL} status: 'Failed'" in k_message)
        return 0 if ok else 1
