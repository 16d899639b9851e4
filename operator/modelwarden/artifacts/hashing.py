"""SHA256 of artifact files: the identity of a model everywhere in ModelWarden."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Lower-case hex SHA256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Lower-case hex SHA256 of a file's content, read in chunks (artifacts can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_sha256_hex(value: str) -> bool:
    """True for exactly 64 lower-case hex digits, the only spelling manifests and specs use."""
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)
