"""Reads artifacts to hash them: ``file://`` and ``http(s)://`` URIs, streamed with byte limits, never stored
and never loaded as a model; and small JSON reports (an artifact's ``bias-report.json``, a feature audit) for the
retraining gates, read no further than their limit."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol
from urllib.parse import unquote, urlparse

import httpx

from modelwarden.artifacts import MANIFEST_FILENAME, SIGNATURE_FILENAME, Manifest
from modelwarden.artifacts.signing import SigningError, verify_directory_signature, verify_signature_over_digests
from modelwarden.engine.decision import SignatureVerdict

CHUNK = 1 << 20
REPORT_LIMIT = 4 << 20  # a report, a manifest or a signature bundle is small: stop reading past this
# A report is read on a reconcile worker (retraining gates, once a window): it gets this long in all.
REPORT_DEADLINE_SECONDS = 30.0


class ArtifactError(Exception):
    """The artifact was not verified; ``reason`` (a condition reason) says why. Only :class:`ArtifactInvalid`
    proves anything about its content; the others are never a mismatch (a mismatch is a sha256 that was read
    and differs)."""

    reason = "ArtifactUnavailable"


class ArtifactUnavailable(ArtifactError):
    """The artifact could not be read (missing, unreachable, 503, unsupported scheme): this proves nothing about
    its content."""


class ArtifactInvalid(ArtifactError):
    """What was read proves the artifact is not one we may serve (a manifest that is not one, or lists files
    outside its directory): as final as a sha256 mismatch."""


class ArtifactTooLarge(ArtifactError):
    """A file, or the directory, declared or sent more bytes than its limit allows."""

    reason = "ArtifactTooLarge"


class VerificationTimedOut(ArtifactError):
    """The verification's overall deadline passed (a trickling server, a huge artifact on a slow link)."""

    reason = "VerificationTimedOut"


class _NotFound(ArtifactUnavailable):
    """HTTP 404."""


@dataclass(frozen=True)
class ByteLimits:
    """How many bytes one verification may read: per file, and over a whole signed directory."""

    max_file_bytes: int = 4 << 30
    max_artifact_bytes: int = 8 << 30


class ArtifactStore(Protocol):
    async def sha256(self, uri: str, limits: ByteLimits) -> str:
        """Raises a kind of :class:`ArtifactError` when no sha256 could be read."""

    async def verify_signature(self, uri: str, trusted_keys: list[bytes], limits: ByteLimits) -> SignatureVerdict:
        """Raises a kind of :class:`ArtifactError` when the directory cannot be read at all."""


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
    """Streams: nothing is written to disk (but a signature bundle of at most ``REPORT_LIMIT`` bytes, which the
    signing library reads from a file) and at most one ``CHUNK`` per transfer is held in memory; each transfer
    stops at its byte limit, whatever the server declared or keeps sending. The overall deadline is the
    caller's (handlers/verification.py); ``timeout_seconds`` bounds each connect and read."""

    def __init__(self, timeout_seconds: float = 30.0, *, allow_file: bool | None = None) -> None:
        self._timeout = timeout_seconds
        # file:// works when the operator, like the test and demo servers, runs on the machine holding the file.
        self._allow_file = not running_in_a_pod() if allow_file is None else allow_file

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self._timeout, follow_redirects=True)

    async def sha256(self, uri: str, limits: ByteLimits = ByteLimits()) -> str:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            if not self._allow_file:
                raise ArtifactUnavailable(FILE_IN_POD.format(path=unquote(parsed.path)))
            return await asyncio.to_thread(_hash_file, Path(unquote(parsed.path)), limits.max_file_bytes)
        if parsed.scheme in ("http", "https"):
            async with self._client() as http:
                return await _stream(http, uri, limits.max_file_bytes, on_more="too-large")
        raise ArtifactUnavailable(f"unsupported URI scheme {parsed.scheme!r} (use file:// or https://)")

    async def verify_signature(self, uri: str, trusted_keys: list[bytes],
                               limits: ByteLimits = ByteLimits()) -> SignatureVerdict:
        """The model-signing signature over the directory of the model file at ``uri``. Over HTTP the directory
        is streamed, never stored: the manifest (bounded), the signature (bounded), then each file the manifest
        lists, hashed as it arrives and read no further than the size the manifest declares (one byte more
        tells the verifier the file changed). Declared sizes over the limits are refused before any file is read."""
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            if not self._allow_file:
                raise ArtifactUnavailable(FILE_IN_POD.format(path=unquote(parsed.path)))
            return await asyncio.to_thread(_verify_directory, Path(unquote(parsed.path)).parent, trusted_keys)
        if parsed.scheme not in ("http", "https"):
            raise ArtifactUnavailable(f"unsupported URI scheme {parsed.scheme!r} (use file:// or https://)")
        base = uri.rsplit("/", 1)[0] + "/"
        async with self._client() as http:
            manifest_bytes = await _read_small(http, base + MANIFEST_FILENAME)
            try:
                manifest = Manifest.model_validate_json(manifest_bytes)
            except ValueError as e:
                raise ArtifactInvalid(f"{base}{MANIFEST_FILENAME} is not a manifest: {e}") from e
            _check_declared_sizes(base, manifest, limits)
            try:
                signature: bytes | None = await _read_small(http, base + SIGNATURE_FILENAME)
            except _NotFound:
                signature = None
            if signature is None:
                return SignatureVerdict(False, "SignatureMissing",
                                        f"{SIGNATURE_FILENAME} is missing: the artifact is unsigned")
            present = {MANIFEST_FILENAME: hashlib.sha256(manifest_bytes).hexdigest()}
            for entry in manifest.files:
                relative = PurePosixPath(entry.path)
                if relative.is_absolute() or ".." in relative.parts:
                    raise ArtifactInvalid(f"{base}{MANIFEST_FILENAME} lists {entry.path!r} outside its directory")
                # A listed file that is not there (404) is the verifier's verdict (a file removed), not an
                # unreachable artifact.
                with contextlib.suppress(_NotFound):
                    present[entry.path] = await _stream(http, base + entry.path, entry.size, on_more="stop")
        return await asyncio.to_thread(_verify_digests, signature, present, trusted_keys)

    async def read_json(self, uri: str) -> object:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            if not self._allow_file:
                raise ArtifactUnavailable(FILE_IN_POD.format(path=unquote(parsed.path)))
            data = await asyncio.to_thread(_read_file, Path(unquote(parsed.path)))
        elif parsed.scheme in ("http", "https"):
            try:
                async with asyncio.timeout(REPORT_DEADLINE_SECONDS), self._client() as http:
                    data = await _read_small(http, uri)
            except TimeoutError as e:
                raise VerificationTimedOut(f"GET {uri}: not read within {REPORT_DEADLINE_SECONDS:.0f}s") from e
        else:
            raise ArtifactUnavailable(f"unsupported URI scheme {parsed.scheme!r} (use file:// or https://)")
        try:
            return json.loads(data)
        except ValueError as e:
            raise ArtifactUnavailable(f"{uri} is not JSON: {e}") from e


def _check_declared_sizes(base: str, manifest: Manifest, limits: ByteLimits) -> None:
    biggest = max(manifest.files, key=lambda f: f.size)
    if biggest.size > limits.max_file_bytes:
        raise ArtifactTooLarge(f"{base}{MANIFEST_FILENAME} declares {biggest.path} of {biggest.size} bytes, over "
                               f"spec.artifact.limits.maxFileBytes ({limits.max_file_bytes})")
    total = sum(f.size for f in manifest.files)
    if total > limits.max_artifact_bytes:
        raise ArtifactTooLarge(f"{base}{MANIFEST_FILENAME} declares {total} bytes in {len(manifest.files)} files, "
                               f"over spec.artifact.limits.maxArtifactBytes ({limits.max_artifact_bytes})")


async def _read_small(http: httpx.AsyncClient, uri: str) -> bytes:
    """A document of at most ``REPORT_LIMIT`` bytes, read as it streams: past the limit it stops reading."""
    out = bytearray()
    await _stream(http, uri, REPORT_LIMIT, on_more="too-large", sink=out)
    return bytes(out)


async def _stream(http: httpx.AsyncClient, uri: str, limit: int, *, on_more: Literal["too-large", "stop"],
                  sink: bytearray | None = None) -> str:
    """GET ``uri`` and hash it (the hex sha256) as it arrives, reading at most ``limit + 1`` bytes: more than
    ``limit`` raises :class:`ArtifactTooLarge` (``on_more="too-large"``) or stops there (``"stop"``: the digest
    then differs from any listed one). A Content-Length over the limit is refused before the body is read."""
    digest = hashlib.sha256()
    read = 0
    try:
        # Raw bytes, asked uncompressed: a small compressed chunk must not decode into a huge one in memory.
        async with http.stream("GET", uri, headers={"Accept-Encoding": "identity"}) as resp:
            if resp.status_code == 404:
                raise _NotFound(f"GET {uri}: HTTP 404")
            if resp.status_code != 200:
                raise ArtifactUnavailable(f"GET {uri}: HTTP {resp.status_code}")
            if resp.headers.get("content-encoding", "identity").lower() != "identity":
                raise ArtifactUnavailable(f"GET {uri}: the server sent Content-Encoding "
                                          f"{resp.headers['content-encoding']!r} although identity was asked")
            declared = resp.headers.get("content-length", "")
            if on_more == "too-large" and declared.isdigit() and int(declared) > limit:
                raise ArtifactTooLarge(f"GET {uri}: Content-Length {declared} is over the limit of {limit} bytes")
            async for chunk in resp.aiter_raw(CHUNK):
                chunk = chunk[: limit + 1 - read]
                digest.update(chunk)
                if sink is not None:
                    sink += chunk
                read += len(chunk)
                if read > limit:
                    if on_more == "too-large":
                        raise ArtifactTooLarge(f"GET {uri}: more than the limit of {limit} bytes")
                    break
    except httpx.HTTPError as e:
        raise ArtifactUnavailable(f"GET {uri}: {e}") from e
    return digest.hexdigest()


def _verify_digests(signature: bytes, present: dict[str, str], trusted_keys: list[bytes]) -> SignatureVerdict:
    try:
        check = verify_signature_over_digests(signature, present, trusted_keys)
    except SigningError as e:
        return SignatureVerdict(False, "TrustedKeysUnavailable", str(e))
    return SignatureVerdict(check.ok, check.reason, check.message, check.signer_fingerprint)


def _verify_directory(directory: Path, trusted_keys: list[bytes]) -> SignatureVerdict:
    try:
        check = verify_directory_signature(directory, trusted_keys)
    except SigningError as e:
        return SignatureVerdict(False, "TrustedKeysUnavailable", str(e))
    return SignatureVerdict(check.ok, check.reason, check.message, check.signer_fingerprint)


def _read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(REPORT_LIMIT + 1)
    except OSError as e:
        raise ArtifactUnavailable(f"{path}: {e.strerror or e}") from e
    if len(data) > REPORT_LIMIT:
        raise ArtifactTooLarge(f"{path} is larger than {REPORT_LIMIT} bytes")
    return data


def _hash_file(path: Path, limit: int) -> str:
    digest = hashlib.sha256()
    read = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                read += len(chunk)
                if read > limit:
                    raise ArtifactTooLarge(f"{path}: more than the limit of {limit} bytes")
                digest.update(chunk)
    except OSError as e:
        raise ArtifactUnavailable(f"{path}: {e.strerror or e}") from e
    return digest.hexdigest()
