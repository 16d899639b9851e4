"""Reads artifacts to hash them: ``file://`` and ``http(s)://`` URIs, streamed, never loaded as a model; and
small JSON reports (an artifact's ``bias-report.json``, a feature audit) for the retraining gates."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import unquote, urlparse

import httpx

from modelwarden.artifacts import MANIFEST_FILENAME, SIGNATURE_FILENAME, Manifest
from modelwarden.artifacts.signing import SigningError, verify_directory_signature
from modelwarden.engine.decision import SignatureVerdict

CHUNK = 1 << 20
REPORT_LIMIT = 4 << 20  # a report is small; refuse anything bigger rather than read it whole


class ArtifactError(Exception):
    """The artifact was not verified: :class:`ArtifactUnavailable` or :class:`ArtifactInvalid`."""


class ArtifactUnavailable(ArtifactError):
    """The artifact could not be read (missing, unreachable, 503, a timeout, unsupported scheme): this proves
    nothing about its content. A rollback waits and retries; it never rejects its target for this."""


class ArtifactInvalid(ArtifactError):
    """What was read proves the artifact is not one we may serve (a manifest that is not one, or lists files
    outside its directory): as final as a sha256 mismatch."""


class _NotFound(ArtifactUnavailable):
    """HTTP 404."""


class ArtifactStore(Protocol):
    async def sha256(self, uri: str) -> str: ...
    async def verify_signature(self, uri: str, trusted_keys: list[bytes]) -> SignatureVerdict:
        """Raises :class:`ArtifactUnavailable` when the directory cannot be read at all, :class:`ArtifactInvalid`
        when what it holds is not an artifact directory."""


class ReportReader(Protocol):
    async def read_json(self, uri: str) -> object: ...


def sibling(uri: str, name: str) -> str:
    """The URI of ``name`` in the same directory as ``uri`` (a model file's reports sit beside it)."""
    return uri.rsplit("/", 1)[0] + "/" + name


def running_in_a_pod() -> bool:
    """The kubelet gives every container the API server's Service address; a process on a workstation lacks it."""
    return "KUBERNETES_SERVICE_HOST" in os.environ


FILE_IN_POD = ("file:// artifacts are local-only: the operator runs in a pod, where {path} would be a path inside "
               "its own container, and the model's pods could not read it either; serve the artifact over https:// "
               "(or http:// inside the cluster)")


class URIArtifactStore:
    def __init__(self, timeout_seconds: float = 30.0, *, allow_file: bool | None = None) -> None:
        self._timeout = timeout_seconds
        # file:// works when the operator, like the test and demo servers, runs on the machine holding the file.
        self._allow_file = not running_in_a_pod() if allow_file is None else allow_file

    async def sha256(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            if not self._allow_file:
                raise ArtifactUnavailable(FILE_IN_POD.format(path=unquote(parsed.path)))
            return await asyncio.to_thread(_hash_file, Path(unquote(parsed.path)))
        if parsed.scheme in ("http", "https"):
            return await self._hash_http(uri)
        raise ArtifactUnavailable(f"unsupported URI scheme {parsed.scheme!r} (use file:// or https://)")

    async def _hash_http(self, uri: str) -> str:
        digest = hashlib.sha256()
        try:
            async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=True) as http, \
                    http.stream("GET", uri) as resp:
                if resp.status_code != 200:
                    raise ArtifactUnavailable(f"GET {uri}: HTTP {resp.status_code}")
                async for chunk in resp.aiter_bytes(CHUNK):
                    digest.update(chunk)
        except httpx.HTTPError as e:
            raise ArtifactUnavailable(f"GET {uri}: {e}") from e
        return digest.hexdigest()


    async def verify_signature(self, uri: str, trusted_keys: list[bytes]) -> SignatureVerdict:
        """The model-signing signature over the directory of the model file at ``uri``. Over HTTP the
        directory is fetched first — its manifest, every file it lists (no more bytes than it says) and the
        signature — into a temporary directory that is removed afterwards: the signature covers the whole
        directory, so there is no cheaper honest check."""
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            return await asyncio.to_thread(_verify_directory, Path(unquote(parsed.path)).parent, trusted_keys)
        if parsed.scheme not in ("http", "https"):
            raise ArtifactUnavailable(f"unsupported URI scheme {parsed.scheme!r} (use file:// or https://)")
        with tempfile.TemporaryDirectory(prefix="modelwarden-verify-") as staging:
            await self._fetch_directory(uri, Path(staging))
            return await asyncio.to_thread(_verify_directory, Path(staging), trusted_keys)

    async def _fetch_directory(self, model_uri: str, staging: Path) -> None:
        base = model_uri.rsplit("/", 1)[0] + "/"
        async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=True) as http:
            await self._download(http, base + MANIFEST_FILENAME, staging / MANIFEST_FILENAME, REPORT_LIMIT)
            try:
                manifest = Manifest.model_validate_json((staging / MANIFEST_FILENAME).read_bytes())
            except ValueError as e:
                raise ArtifactInvalid(f"{base}{MANIFEST_FILENAME} is not a manifest: {e}") from e
            for entry in manifest.files:
                relative = PurePosixPath(entry.path)
                if relative.is_absolute() or ".." in relative.parts:
                    raise ArtifactInvalid(f"{base}{MANIFEST_FILENAME} lists {entry.path!r} outside its directory")
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                # A listed file or the signature that is not there (404) is the verifier's verdict (a file
                # removed, SignatureMissing), not an unreachable artifact.
                with contextlib.suppress(_NotFound):
                    await self._download(http, base + entry.path, staging / relative, entry.size)
            with contextlib.suppress(_NotFound):
                await self._download(http, base + SIGNATURE_FILENAME, staging / SIGNATURE_FILENAME, REPORT_LIMIT)

    @staticmethod
    async def _download(http: httpx.AsyncClient, uri: str, dest: Path, limit: int) -> None:
        written = 0
        try:
            async with http.stream("GET", uri) as resp:
                if resp.status_code == 404:
                    raise _NotFound(f"GET {uri}: HTTP 404")
                if resp.status_code != 200:
                    raise ArtifactUnavailable(f"GET {uri}: HTTP {resp.status_code}")
                with dest.open("wb") as out:
                    async for chunk in resp.aiter_bytes(CHUNK):
                        # One byte past the expected size is enough to tell the verifier the file changed.
                        out.write(chunk[: limit + 1 - written])
                        written += len(chunk)
                        if written > limit:
                            break
        except httpx.HTTPError as e:
            raise ArtifactUnavailable(f"GET {uri}: {e}") from e

    async def read_json(self, uri: str) -> object:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            if not self._allow_file:
                raise ArtifactUnavailable(FILE_IN_POD.format(path=unquote(parsed.path)))
            data = await asyncio.to_thread(_read_file, Path(unquote(parsed.path)))
        elif parsed.scheme in ("http", "https"):
            try:
                async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=True) as http:
                    resp = await http.get(uri)
            except httpx.HTTPError as e:
                raise ArtifactUnavailable(f"GET {uri}: {e}") from e
            if resp.status_code != 200:
                raise ArtifactUnavailable(f"GET {uri}: HTTP {resp.status_code}")
            data = resp.content[: REPORT_LIMIT + 1]
        else:
            raise ArtifactUnavailable(f"unsupported URI scheme {parsed.scheme!r} (use file:// or https://)")
        if len(data) > REPORT_LIMIT:
            raise ArtifactUnavailable(f"{uri} is larger than {REPORT_LIMIT} bytes")
        try:
            return json.loads(data)
        except ValueError as e:
            raise ArtifactUnavailable(f"{uri} is not JSON: {e}") from e


def _verify_directory(directory: Path, trusted_keys: list[bytes]) -> SignatureVerdict:
    try:
        check = verify_directory_signature(directory, trusted_keys)
    except SigningError as e:
        return SignatureVerdict(False, "TrustedKeysUnavailable", str(e))
    return SignatureVerdict(check.ok, check.reason, check.message, check.signer_fingerprint)


def _read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(REPORT_LIMIT + 1)
    except OSError as e:
        raise ArtifactUnavailable(f"{path}: {e.strerror or e}") from e


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise ArtifactUnavailable(f"{path}: {e.strerror or e}") from e
    return digest.hexdigest()
