"""Benchmark: OpenSSF model-signing sign and verify times for the demo models and a generated 500 MB model.

    .venv/bin/python -m bench.signing [--runs 5] [--size-mb 500]

For each artifact directory: ``sign_directory`` (hash every file, sign with a P-256 key, write ``model.sig``),
``verify_directory_signature`` (verify the bundle, re-hash every file, compare), and as the baseline what the
pipeline already does without signatures: ``verify_manifest`` (every file's sha256 against ``manifest.json``).
What verification adds to a rollback is measured the way the operator checks a rollback target: the
artifact store's ``sha256`` of the model file alone, against ``sha256`` then ``verify_signature`` (the same
calls, in the same run). Medians of ``--runs`` runs; the 500 MB directory is written once (random bytes: a
model's weights do not compress either) and read from the page cache afterwards, as a fetch that has just
written it would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from model_server.demo_artifact import build_demo_artifact
from modelwarden.adapters.artifact_store import URIArtifactStore
from modelwarden.artifacts import build_manifest, read_manifest, verify_manifest, write_manifest
from modelwarden.artifacts.signing import sign_directory, verify_directory_signature


def _median_seconds(action: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def large_artifact(directory: Path, size_mb: int) -> Path:
    """A model file of ``size_mb - 2`` MiB and a few small files, with its manifest."""
    directory.mkdir(parents=True)
    with (directory / "model.onnx").open("wb") as f:
        for _ in range(size_mb - 2):
            f.write(os.urandom(1 << 20))
    (directory / "tokenizer.bin").write_bytes(os.urandom(2 << 20))
    (directory / "model_meta.json").write_text('{"features": ["x"], "n_features": 1}\n')
    write_manifest(directory, build_manifest(directory, model="big", version="1.0.0", format="onnx",
                                             model_file="model.onnx", created_at=datetime(2026, 1, 1, tzinfo=UTC)))
    return directory


def measure(name: str, directory: Path, key: Path, public: bytes, runs: int) -> dict[str, Any]:
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    sign = _median_seconds(lambda: sign_directory(directory, key), runs)
    verify = _median_seconds(lambda: verify_directory_signature(directory, [public]), runs)
    assert verify_directory_signature(directory, [public]).ok
    baseline = _median_seconds(lambda: verify_manifest(directory), runs)
    store, uri = URIArtifactStore(), (directory / read_manifest(directory).model_file).as_uri()

    async def target_check(with_signature: bool) -> None:
        await store.sha256(uri)
        if with_signature:
            assert (await store.verify_signature(uri, [public])).ok

    rollback_plain = _median_seconds(lambda: asyncio.run(target_check(False)), runs)
    rollback_signed = _median_seconds(lambda: asyncio.run(target_check(True)), runs)
    return {"artifact": name, "bytes": size, "sign_s": sign, "verify_s": verify, "manifest_check_s": baseline,
            "rollback_plain_s": rollback_plain, "rollback_signed_s": rollback_signed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.signing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=500)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.size_mb < 3:
        parser.error("--runs must be >= 1 and --size-mb >= 3")
    with tempfile.TemporaryDirectory(prefix="mw-bench-signing-") as tmp:
        root = Path(tmp)
        key = ec.generate_private_key(ec.SECP256R1())
        (root / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        rows = []
        for kind, fmt in (("logistic", "skops"), ("gbm", "onnx")):
            demo = build_demo_artifact(root / f"demo-{kind}-{fmt}", kind=kind, fmt=fmt, n_features=28)
            rows.append(measure(f"demo {kind} {fmt}", demo.directory, root / "key.pem", public, args.runs))
        start = time.perf_counter()
        big = large_artifact(root / "big", args.size_mb)
        print(f"[bench] wrote the {args.size_mb} MB directory in {time.perf_counter() - start:.1f}s")
        rows.append(measure(f"generated {args.size_mb} MB", big, root / "key.pem", public, args.runs))
    print(f"{'artifact':<22} {'size':>10} {'sign':>9} {'verify':>9} {'sha256 manifest check':>22} "
          f"{'verify / manifest check':>24}")
    for r in rows:
        print(f"{r['artifact']:<22} {r['bytes'] / 1e6:>8.2f}MB {r['sign_s'] * 1e3:>7.1f}ms "
              f"{r['verify_s'] * 1e3:>7.1f}ms {r['manifest_check_s'] * 1e3:>20.1f}ms "
              f"{r['verify_s'] / r['manifest_check_s']:>23.2f}x")
    print(f"\n{'rollback target check':<22} {'sha256 only':>12} {'+ signature':>12} {'added':>10}")
    for r in rows:
        print(f"{r['artifact']:<22} {r['rollback_plain_s'] * 1e3:>10.1f}ms {r['rollback_signed_s'] * 1e3:>10.1f}ms "
              f"{(r['rollback_signed_s'] - r['rollback_plain_s']) * 1e3:>8.1f}ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
