"""``python -m model_server.fetch``: copy an artifact directory into the pod before the server starts.

The MLModel names the model *file* (``spec.artifact.uri``); its directory holds ``manifest.json`` and the files
it lists. Each file is fetched (``file://`` or ``http(s)://``), checked against the manifest's sha256 and size,
and the model file against ``ARTIFACT_SHA256``; anything that does not match stops the pod before a byte is
loaded. With ``ARTIFACT_TRUSTED_KEYS_DIR`` (the MLModel's ``spec.artifact.signature``: a mounted ConfigMap of
PEM public keys) the directory's ``model.sig`` is fetched too and must verify by one of those keys over
exactly the fetched files. Runs as the Deployment's init container with the same environment as the server.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.parse
from pathlib import Path

import httpx

from modelwarden.artifacts import MANIFEST_FILENAME, SIGNATURE_FILENAME, Manifest, verify_manifest
from modelwarden.artifacts.signing import SigningError, verify_directory_signature

CHUNK = 1 << 20


class FetchError(Exception):
    pass


def _copy(uri: str, dest: Path) -> str:
    """Copy ``uri`` to ``dest``; return its sha256."""
    digest = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    parsed = urllib.parse.urlparse(uri)
    with dest.open("wb") as out:
        if parsed.scheme == "file":
            source = Path(urllib.parse.unquote(parsed.path))
            if not source.exists():
                raise FetchError(f"{uri}: no such file here. A file:// URI names a path on the machine that wrote it; "
                                 "a pod sees only its own filesystem — serve the artifact over http(s)://")
            with source.open("rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        elif parsed.scheme in ("http", "https"):
            with httpx.stream("GET", uri, timeout=60, follow_redirects=True) as resp:
                if resp.status_code != 200:
                    raise FetchError(f"GET {uri}: HTTP {resp.status_code}")
                for chunk in resp.iter_bytes(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        else:
            raise FetchError(f"unsupported URI scheme {parsed.scheme!r} in {uri}")
    return digest.hexdigest()


def trusted_keys(directory: Path) -> list[bytes]:
    """Every PEM file of a mounted ConfigMap (its ``..data`` bookkeeping entries skipped)."""
    try:
        keys = [p.read_bytes() for p in sorted(directory.iterdir()) if not p.name.startswith(".") and p.is_file()]
    except OSError as e:
        raise FetchError(f"cannot read the trusted keys in {directory}: {e.strerror or e}") from e
    if not keys:
        raise FetchError(f"no trusted public key in {directory}")
    return keys


def fetch(model_uri: str, expected_sha256: str, directory: Path, keys: list[bytes] | None = None) -> Manifest:
    """Fetch and verify; with ``keys`` the directory's signature must verify by one of them."""
    base = model_uri.rsplit("/", 1)[0] + "/"
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _copy(urllib.parse.urljoin(base, MANIFEST_FILENAME), staging / MANIFEST_FILENAME)
        manifest = Manifest.model_validate_json((staging / MANIFEST_FILENAME).read_text())
        if urllib.parse.urljoin(base, manifest.model_file) != model_uri:
            raise FetchError(f"{model_uri} is not the manifest's model file ({manifest.model_file})")
        for entry in manifest.files:
            _copy(urllib.parse.urljoin(base, entry.path), staging / entry.path)
        if keys is not None:
            try:
                _copy(urllib.parse.urljoin(base, SIGNATURE_FILENAME), staging / SIGNATURE_FILENAME)
            except (OSError, FetchError) as e:
                raise FetchError(f"SignatureMissing: {SIGNATURE_FILENAME} cannot be fetched: {e}") from e
        problems = verify_manifest(staging)
        if problems:
            raise FetchError("artifact does not match its manifest: " + "; ".join(str(p) for p in problems))
        actual = hashlib.sha256((staging / manifest.model_file).read_bytes()).hexdigest()
        if actual != expected_sha256:
            raise FetchError(f"{manifest.model_file} has sha256 {actual}, the MLModel says {expected_sha256}")
        if keys is not None:
            try:
                check = verify_directory_signature(staging, keys)
            except SigningError as e:
                raise FetchError(f"TrustedKeysUnavailable: {e}") from e
            if not check.ok:
                raise FetchError(f"{check.reason}: {check.message}")
    except (OSError, httpx.HTTPError, ValueError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise FetchError(f"cannot fetch {model_uri}: {e}") from e
    except FetchError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return manifest


def main() -> int:
    try:
        uri, sha, target = os.environ["ARTIFACT_URI"], os.environ["ARTIFACT_SHA256"], os.environ["ARTIFACT_DIR"]
    except KeyError as e:
        print(f"fetch: {e.args[0]} is required", file=sys.stderr)
        return 2
    keys_dir = os.environ.get("ARTIFACT_TRUSTED_KEYS_DIR")
    try:
        keys = trusted_keys(Path(keys_dir)) if keys_dir else None
        manifest = fetch(uri, sha.lower(), Path(target), keys)
    except FetchError as e:
        print(f"fetch: {e}", file=sys.stderr)
        return 1
    print(f"fetch: {manifest.model} {manifest.version}: {len(manifest.files)} files verified into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
