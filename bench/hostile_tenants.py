"""Benchmark: a rollback here while another namespace's ten hostile artifacts are being verified (issue 24, item 5).

    .venv/bin/python -m bench.hostile_tenants [--runs 3] [--before DIR] [--limit 180] [--zeros-mib-per-second 8]

Real control plane (private environment, KWOK nodes), real operator process (MODELWARDEN_RESYNC_SECONDS=10, its
TMPDIR a directory of its own so its temporary-file use can be measured). ``2 x runs`` models are each promoted
v1 → v2; then ``runs`` of them are rolled back (a rollback ModelAction filed as the on-call engineer, as
``modelwarden rollback`` does) with no other tenant, then the ten hostile models of localenv.hostile_store
(trickling, huge declared sizes, a manifest declaring 1 TiB, an endless body, a 64 MiB signed model within and
over its limits) are created in another namespace and the other ``runs`` models are rolled back while those are
verified. Each rollback is timed from the action's creation to the stable Deployment fully rolled out and Ready on
v1's sha256 with no canary; a rollback that takes longer than ``--limit`` seconds is reported as such. The
operator's peak RSS (VmHWM) and the peak size of its TMPDIR (sampled every 0.1 s) are reported for the whole run.

``--before DIR`` runs the operator from another source tree's ``operator/`` (e.g. ``git archive <commit>
operator | tar -x -C DIR``) against the same scenario, for a before/after comparison; that tree must act on
ModelActions (issue 27), since the rollback annotation decides nothing any more.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client, config

from bench.common import FEEDBACK_STORE, Approvers, restored_on
from localenv import cluster as cluster_env
from localenv import modelwarden as modelwarden_env
from localenv.hostile_store import HostileStore, signed_directory, ten_hostile_models, write_key
from modelwarden.api import v1alpha1 as api

MiB = 1 << 20


class Sampler:
    """The operator's peak RSS (from the kernel's high-water mark) and the peak size of its TMPDIR."""

    def __init__(self, pid: int, tmpdir: Path) -> None:
        self.pid, self.tmpdir = pid, tmpdir
        self.peak_tmp = 0
        self.peak_rss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            used = 0
            for root, _, files in os.walk(self.tmpdir):
                for name in files:
                    with contextlib.suppress(OSError):  # removed while walking
                        used += os.lstat(os.path.join(root, name)).st_size
            self.peak_tmp = max(self.peak_tmp, used)
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def spec(version: str, uri: str, sha: str) -> dict[str, object]:
    return {"version": version, "artifact": {"uri": uri, "sha256": sha, "format": "skops"},
            "featureContract": {"name": "demo", "features": ["a", "b"], "nFeatures": 2},
            "serving": {"replicas": 2, "feedbackStore": FEEDBACK_STORE},
            "rollout": {"steps": [{"setWeight": 100, "pauseSeconds": 0}]},
            # No warm standby: the rollback takes the artifact store's path, through the verification pool.
            "rollback": {"standby": {"replicas": 0}}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before", type=Path, help="run the operator from this source tree's operator/")
    parser.add_argument("--zeros-mib-per-second", type=int, default=8,
                        help="how fast the endless bodies flow (default 8: an operator that stores them fills its "
                             "disk no faster)")
    parser.add_argument("--limit", type=float, default=180.0, help="seconds a rollback may take before it is "
                                                                  "reported as not done (default 180)")
    args = parser.parse_args()

    cluster = cluster_env.up()
    modelwarden_env.install(cluster)
    admin = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))  # type: ignore[no-untyped-call]
    core, apps, custom = client.CoreV1Api(admin), client.AppsV1Api(admin), client.CustomObjectsApi(admin)
    oncall = client.CustomObjectsApi(config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(cluster.kubeconfigs["oncall"])))
    approvers = Approvers(cluster)
    oncall = client.CustomObjectsApi(
        config.new_client_from_config(config_file=str(cluster.kubeconfigs["oncall"])))  # type: ignore[no-untyped-call]
    here, tenant = f"bench-here-{uuid.uuid4().hex[:6]}", f"bench-tenant-{uuid.uuid4().hex[:6]}"
    for ns in (here, tenant):
        core.create_namespace(cluster_env.simulated_nodes_namespace(ns))
    work = Path(tempfile.mkdtemp(prefix="modelwarden-bench-hostile-"))
    operator_tmp = work / "operator-tmp"
    operator_tmp.mkdir()
    env = {"MODELWARDEN_RESYNC_SECONDS": "10", "TMPDIR": str(operator_tmp)}
    if args.before is not None:
        env["PYTHONPATH"] = str(args.before.resolve() / "operator")
    operator = modelwarden_env.OperatorProcess(cluster, work / "operator.log", env=env).start()
    assert operator.process is not None
    sampler = Sampler(operator.process.pid, operator_tmp)

    def create(ns: str, name: str, body: dict[str, object]) -> None:
        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.MLMODEL_PLURAL, {
            "apiVersion": api.API_VERSION, "kind": "MLModel", "metadata": {"name": name}, "spec": body})

    def status(ns: str, name: str) -> api.MLModelStatus:
        obj: Any = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.MLMODEL_PLURAL, name)
        return api.MLModelStatus.model_validate(obj.get("status") or {})

    def wait(check: object, limit: float) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if callable(check) and check():
                return time.monotonic() - started
            time.sleep(0.1)
        return None

    models = [f"m{i}" for i in range(2 * args.runs)]
    shas: dict[str, tuple[str, str]] = {}
    for name in models:
        uris = []
        for version in ("v1", "v2"):
            data = f"{name} {version}\n".encode() * 64
            path = work / f"{name}-{version}.skops"
            path.write_bytes(data)
            uris.append((path.as_uri(), hashlib.sha256(data).hexdigest()))
            approvers.approve(here, name, version, uris[-1][1])
        shas[name] = (uris[0][1], uris[1][1])
        create(here, name, spec("v1", *uris[0]))
        wait(lambda n=name: status(here, n).phase == api.Phase.STABLE, 120)
        custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, here, api.MLMODEL_PLURAL, name,
                                              {"spec": spec("v2", *uris[1])})
    for name in models:
        done = wait(lambda n=name: (s := status(here, n)).phase == api.Phase.STABLE and s.stable is not None
                    and s.stable.version == "v2", 180)
        assert done is not None, f"{name}: v2 not promoted"

    def rollback(name: str) -> float | None:
        # the ModelAction `modelwarden rollback` files, created directly so that the CLI's start-up is not timed
        uid = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, here, api.MLMODEL_PLURAL, name)[
            "metadata"]["uid"]
        action = api.ModelActionSpec(model_ref=api.ModelRef(name=name), verb="rollback", requester="oncall",
                                     model_uid=uid)
        oncall.create_namespaced_custom_object(api.GROUP, api.VERSION, here, api.ACTION_PLURAL, {
            "apiVersion": api.API_VERSION, "kind": "ModelAction",
            "metadata": {"generateName": f"{name}-rollback-", "labels": {api.LABEL_MODEL: name}},
            "spec": action.wire()})
        return wait(lambda: restored_on(apps, here, name, shas[name][0]), args.limit)

    alone = [rollback(name) for name in models[:args.runs]]
    key, public = write_key(work)
    big_sha = signed_directory(work / "store" / "big", key, model_bytes=64 * MiB)
    modelwarden_env.trust_artifact_keys(cluster, {"release": public.decode()}, "hostile-tenants-bench")
    core.create_namespaced_config_map(tenant, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="trusted-keys"),
                                                                 data={"release.pub": public.decode()}))
    with HostileStore(work / "store", zeros_per_second=args.zeros_mib_per_second * MiB) as store:
        hostile = ten_hostile_models(store.url, big_sha, "trusted-keys")
        for model in hostile:
            body = spec("v1", "file:///unused", "0" * 64)
            body["artifact"] = {"format": "skops", **model.artifact}
            create(tenant, model.name, body)
        time.sleep(3)  # the operator has taken up the hostile models
        beside = [rollback(name) for name in models[args.runs:]]
        time.sleep(10)
        reasons = {}
        for model in hostile:
            verified = next((c for c in status(tenant, model.name).conditions
                             if c.type == api.ConditionType.ARTIFACT_VERIFIED), None)
            reasons[model.name] = verified.reason if verified is not None else None
    sampler.stop()
    alive = operator.process is not None and operator.process.poll() is None
    operator.stop()
    for ns in (here, tenant):
        core.delete_namespace(ns)

    def show(times: list[float | None]) -> str:
        done = [t for t in times if t is not None]
        text = ", ".join(f"{t:.2f}" if t is not None else f">{args.limit:.0f}" for t in times)
        median = f"median {statistics.median(done):.2f} s" if done else "none done"
        return f"{median} ({text})"

    print(f"operator: {'--before ' + str(args.before) if args.before else 'this tree'}; alive at the end: {alive}")
    print(f"rollback here, no other tenant:          {show(alone)}")
    print(f"rollback here, ten hostile models beside: {show(beside)}")
    print(f"operator peak RSS {sampler.peak_rss_kib / 1024:.0f} MiB; peak TMPDIR use {sampler.peak_tmp / 1024:.0f} KiB")
    print(f"hostile models' ArtifactVerified reasons: {reasons}")
    print(f"bytes the hostile store sent: {dict(store.sent)}")
    print(f"operator log: {work / 'operator.log'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
