"""The warm standby on the real node, through the Service (issue 24): v1 → v2 promoted, the standby of v1 Ready
and answering nobody, the artifact store stopped, ``modelwarden rollback`` as on-call ⇒ every answer through the
Service's ClusterIP (kube-proxy) carries v1's ``x-model-sha256``, served by the standby's pods (scaled up) while
the stable Deployment cannot fetch v1. The story's steps are ``bench/rollback_standby.py``'s (which times them)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from kubernetes import client

from bench.rollback_standby import MODEL, REPLICAS, Story, build_artifacts, ready, wait_for
from localenv.artifacts import ArtifactServer
from localenv.cluster import Cluster
from localenv.modelwarden import OperatorProcess
from modelwarden.api import v1alpha1 as api


def programmed(namespace: str) -> set[str]:
    """The pod IPs kube-proxy's iptables rules send the model Service's connections to now."""
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    marker = f'--comment "{namespace}/{MODEL}:http -> '
    return {line.split(marker, 1)[1].split(":", 1)[0] for line in nat.splitlines()
            if line.startswith("-A KUBE-SVC-") and marker in line}


def test_a_rollback_with_the_artifact_store_down_is_served_by_the_standby_through_the_service(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], real_namespace: str,
        tmp_path: Path) -> None:
    artifacts = build_artifacts(tmp_path)
    v1, v2 = artifacts["v1"].sha256, artifacts["v2"].sha256
    story = Story(modelwarden_installed, real_namespace, artifacts)
    operator = OperatorProcess(modelwarden_installed, tmp_path / "operator.log", env={
        "MODELWARDEN_RESYNC_SECONDS": "5"}).start()
    try:
        server = ArtifactServer(tmp_path)
        try:
            uris = {v: server.uri(a.directory / a.model_file) for v, a in artifacts.items()}
            story.promote_v1_then_v2(uris, 1, operator.check_alive)
            url = story.service_url()
            selector = story.core.read_namespaced_service(MODEL, real_namespace).spec.selector
            assert selector == {api.LABEL_MODEL: MODEL, api.LABEL_SERVING: "true"}
            [standby] = story.pods("standby")
            assert standby.metadata.labels[api.LABEL_SERVING] == "false" and ready(standby)
            # kube-proxy follows the EndpointSlices a moment later (and a drained v1 pod answers until then): count
            # once its rules name exactly the stable's pods.
            stable_ips = {p.status.pod_ip for p in story.pods("stable")}
            wait_for(lambda: programmed(real_namespace) == stable_ips, 120,
                     "kube-proxy's rules for the Service naming exactly the stable's pods")
            assert standby.status.pod_ip not in programmed(real_namespace)
            before = set(story.answers(url, 200))
            pods = [(p.metadata.name, p.metadata.labels, p.metadata.annotations.get(api.ANNOTATION_SHA256), ready(p))
                    for p in story.pods()]
            assert before == {v2}, f"the standby answers no user before a rollback; v1 {v1}, v2 {v2}; pods {pods}"
        finally:
            server.close()  # the artifact store is down from here on

        took = story.roll_back()
        answers = story.answers(url, 200)
        assert set(answers) == {v1}, f"answers after the rollback: {sorted(set(answers))}"
        print(f"rollback with the artifact store down: every answer on v1's sha256 {took:.1f}s after "
              "`modelwarden rollback` started")
        # Traffic moves in the pass that starts the rollback; the pass after it (a second later) sees the Service
        # on the standby and ends the rollback: Halted.
        wait_for(lambda: story.status().phase == api.Phase.HALTED, 60, "the rollback ends Halted")
        status = story.status()
        assert status.stable is not None and status.stable.sha256 == v1
        rb = status.last_rollback
        assert rb is not None and rb.to_sha256 == v1
        events = [t.event for t in rb.timeline]
        assert "StandbyServing" in events and "TargetRejected" not in events, events
        # The standby carries the traffic, scaled to the model's replicas; the stable's v1 pods cannot fetch.
        selector = story.core.read_namespaced_service(MODEL, real_namespace).spec.selector
        assert selector == {api.LABEL_MODEL: MODEL, api.LABEL_TRACK: "standby"}
        assert sum(ready(p) for p in story.pods("standby")) >= 1
        deployment = client.AppsV1Api(api_clients["admin"]).read_namespaced_deployment(f"{MODEL}-standby",
                                                                                        real_namespace)
        assert deployment.spec.replicas == REPLICAS
        assert set(story.answers(url, 200)) == {v1}
        # Later passes keep it there: the stable Deployment's one ready pod is still v2's (its v1 pod cannot fetch),
        # so the Service must not go back to it. Two resyncs later every answer is still v1's.
        time.sleep(11)
        assert story.core.read_namespaced_service(MODEL, real_namespace).spec.selector[api.LABEL_TRACK] == "standby"
        assert set(story.answers(url, 200)) == {v1}
    except BaseException:
        print(operator.log()[-6000:])
        raise
    finally:
        operator.stop()
