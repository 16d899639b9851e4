"""Benchmark: how large a year of decision ledger is for a model with a weekly release (issue 18).

    .venv/bin/python -m bench.ledger_size [--releases 4]

Real control plane, real operator process. One model goes through ``--releases`` releases the way a weekly
release goes: a new version in spec, both sign-offs, a canary at 20% (timed) then 50% waiting for a person, a
`promote` ModelAction by the finance approver, promotion. Then one manual rollback by on-call and its resume (a
bad week). The ledger is read back from the cluster: records per release, bytes per record as stored (the
ModelLedger objects' JSON), and API writes per record (the operator's metrics). A year is 52 releases plus, say,
four bad weeks; segments hold 64 records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client, config

from bench.common import Approvers
from localenv import cluster as cluster_env
from localenv import modelwarden as modelwarden_env
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.ledger import SEGMENT_RECORDS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", type=int, default=4)
    args = parser.parse_args()

    cluster = cluster_env.up()
    modelwarden_env.install(cluster)
    admin = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))  # type: ignore[no-untyped-call]
    core, custom = client.CoreV1Api(admin), client.CustomObjectsApi(admin)
    ns = f"bench-ledger-{uuid.uuid4().hex[:6]}"
    core.create_namespace(cluster_env.simulated_nodes_namespace(ns))
    work = Path(tempfile.mkdtemp(prefix="modelwarden-bench-"))
    operator = modelwarden_env.OperatorProcess(cluster, work / "operator.log",
                                               env={"MODELWARDEN_RESYNC_SECONDS": "5"}).start()
    approvers = Approvers(cluster)

    def status() -> api.MLModelStatus:
        obj: Any = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.MLMODEL_PLURAL, "weekly")
        return api.MLModelStatus.model_validate(obj.get("status") or {})

    def wait(cond: Any, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond(status()):
                return
            time.sleep(0.3)
        raise TimeoutError(what)

    def cli(user: str, *argv: str) -> None:
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfigs[user])}
        subprocess.run([sys.executable, "-m", "modelwarden.cli.main", *argv, "-n", ns], env=env, check=True,
                       capture_output=True, timeout=60)

    def artifact(version: str) -> tuple[str, str]:
        data = f"weekly {version}".encode() * 32
        (work / f"{version}.skops").write_bytes(data)
        return (work / f"{version}.skops").as_uri(), hashlib.sha256(data).hexdigest()

    def records() -> list[dict[str, Any]]:
        listed: Any = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.LEDGER_PLURAL,
                                                           label_selector=f"{api.LABEL_MODEL}=weekly")
        return [r for o in listed["items"] for r in o["spec"]["records"]]

    per_release: list[int] = []
    try:
        uri, sha = artifact("v0")
        approvers.approve(ns, "weekly", "v0", sha)
        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.MLMODEL_PLURAL, {
            "apiVersion": api.API_VERSION, "kind": "MLModel", "metadata": {"name": "weekly"},
            "spec": {"version": "v0", "artifact": {"uri": uri, "sha256": sha},
                     "featureContract": {"name": "fc", "features": ["a"], "nFeatures": 1},
                     "rollout": {"steps": [{"setWeight": 20, "pauseSeconds": 1}, {"setWeight": 50}]}}})
        wait(lambda s: s.phase == "Stable", "v0 stable")
        for n in range(1, args.releases + 1):
            before = len(records())
            version = f"v{n}"
            uri, sha = artifact(version)
            custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.MLMODEL_PLURAL, "weekly",
                                                  {"spec": {"version": version,
                                                            "artifact": {"uri": uri, "sha256": sha}}})
            wait(lambda s: s.phase == "AwaitingApproval", f"{version} awaiting approval")
            approvers.approve(ns, "weekly", version, sha)
            wait(lambda s: s.phase == "Paused", f"{version} paused")
            cli("finance-approver", "promote", "weekly")
            wait(lambda s, v=version: s.stable is not None and s.stable.version == v and s.phase == "Stable",
                 f"{version} promoted")
            time.sleep(1)
            per_release.append(len(records()) - before)
            print(f"  release {version}: {per_release[-1]} records", flush=True)
        before = len(records())
        cli("oncall", "rollback", "weekly")
        wait(lambda s: s.phase == "Halted" and s.last_rollback is not None and bool(s.last_rollback.completed_at),
             "rolled back")
        cli("oncall", "resume", "weekly")
        wait(lambda s: s.phase == "Paused", "re-canaried after resume")
        cli("finance-approver", "promote", "weekly")
        wait(lambda s: s.phase == "Stable", "stable again")
        time.sleep(1)
        bad_week = len(records()) - before
        metrics = {line.partition(" ")[0]: float(line.partition(" ")[2]) for line in operator.metrics().splitlines()
                   if line.startswith("modelwarden_ledger_")and " " in line and "{" not in line}
        stored = records()
    finally:
        operator.stop()
        core.delete_namespace(ns)
    sizes = [len(json.dumps(r, separators=(",", ":"))) for r in stored]
    per_record = statistics.mean(sizes)
    release = statistics.median(per_release)
    year_records = 52 * release + 4 * bad_week
    segments = -(-year_records // SEGMENT_RECORDS)
    writes, appended = metrics.get("modelwarden_ledger_writes", 0), metrics.get("modelwarden_ledger_records", 1)
    print(f"\nper release (new version → approvals → canary → promote by a person): {release:.0f} records; "
          f"a rollback and its resume: {bad_week} records")
    print(f"record size as stored: mean {per_record:.0f} B, max {max(sizes)} B ({len(stored)} records)")
    print(f"API writes per record appended: {writes / appended:.2f} ({writes:.0f} writes, {appended:.0f} records; "
          f"a pass's records go in one write)")
    print(f"a year (52 releases + 4 bad weeks): {year_records:.0f} records, {year_records * per_record / 1024:.0f} KiB "
          f"in {segments:.0f} ModelLedger objects of ≤ {SEGMENT_RECORDS} records "
          f"(≤ {SEGMENT_RECORDS * max(sizes) / 1024:.0f} KiB each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
