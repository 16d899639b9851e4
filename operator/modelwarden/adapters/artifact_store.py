"""Reads artifacts to hash them: ``file://`` and ``http(s)://`` URIs, streamed, never loaded as a model."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import httpx

CHUNK = 1 << 20


class ArtifactUnavailable(Exception):
    """The artifact could not be read (missing, unreachable, unsupported scheme)."""


class ArtifactStore(Protocol):
    async def sha256(self, uri: str) -> str: ...


class URIArtifactStore:
    def __init__(self, timeout_seconds: float = 30.0) -> None:
        self._timeout = timeout_seconds

    async def sha256(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
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


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise ArtifactUnavailable(f"{path}: {e.strerror or e}") from e
    return digest.hexdigest()
