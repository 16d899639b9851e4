"""An artifact store that misbehaves on purpose, on loopback: what another tenant can point its models at.

Routes (the last path segment is the file asked for, as the operator derives ``manifest.json`` and ``model.sig``
beside a model file):

- ``/honest/<path>``: the file ``<path>`` under ``root``, with its Content-Length (a big signed model, or an
  ordinary one); ``on_honest(path, bytes_sent)`` is called as it streams (a test samples disk use there);
- ``/trickle/...``: 200 with a Content-Length of 1 MiB, then one byte every ``trickle_interval`` seconds;
- ``/declared/...``: 200 declaring 1 PiB, then zeros for as long as the client reads;
- ``/manifest-huge/model.skops``: ``small_model`` bytes; ``/manifest-huge/manifest.json``: a manifest that lists
  ``weights.bin`` at 1 TiB; ``/manifest-huge/weights.bin``: zeros for as long as the client reads;
- ``/endless/...``: a JSON document that never ends (no Content-Length), for as long as the client reads.

``sent`` counts the bytes of body written per route, ``requested`` every path asked for.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelwarden.artifacts import MANIFEST_FILENAME, build_manifest, write_manifest
from modelwarden.artifacts.manifest import Manifest, ManifestFile
from modelwarden.artifacts.signing import sign_directory

CHUNK = 64 << 10
MiB = 1 << 20
ZEROS_PER_SECOND = 64 * MiB
SMALL_MODEL = b"a small model file whose sha256 the spec names\n"


def small_model_sha256() -> str:
    return hashlib.sha256(SMALL_MODEL).hexdigest()


def huge_manifest() -> bytes:
    return Manifest(model="m", version="v1", format="skops", model_file="model.skops",
                    created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                    files=(ManifestFile(path="model.skops", sha256=small_model_sha256(), size=len(SMALL_MODEL)),
                           ManifestFile(path="weights.bin", sha256="0" * 64, size=1 << 40))).to_bytes()


class HostileStore:
    def __init__(self, root: Path | None = None, *, trickle_interval: float = 0.2,
                 zeros_per_second: int = ZEROS_PER_SECOND, on_honest: Callable[[str, int], None] | None = None,
                 ) -> None:
        self.root = root
        self.zeros_per_second = zeros_per_second
        self.trickle_interval = trickle_interval
        self.on_honest = on_honest
        self.sent: Counter[str] = Counter()
        self.requested: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                store._serve(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-store", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> HostileStore:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def _count(self, route: str, n: int) -> None:
        with self._lock:
            self.sent[route] += n

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        with self._lock:
            self.requested.append(path)
        route, _, rest = path.lstrip("/").partition("/")
        try:
            if route == "honest" and self.root is not None:
                self._honest(h, rest)
            elif route == "trickle":
                self._head(h, 1 << 20)
                while not self._stopping.is_set():
                    h.wfile.write(b"x")
                    h.wfile.flush()
                    self._count(route, 1)
                    time.sleep(self.trickle_interval)
            elif route == "declared":
                self._head(h, 1 << 50)
                self._zeros(h, route)
            elif route == "manifest-huge":
                if rest == "model.skops":
                    self._head(h, len(SMALL_MODEL))
                    h.wfile.write(SMALL_MODEL)
                elif rest == MANIFEST_FILENAME:
                    body = huge_manifest()
                    self._head(h, len(body))
                    h.wfile.write(body)
                elif rest == "weights.bin":
                    self._head(h, 1 << 40)
                    self._zeros(h, route)
                else:
                    self._missing(h)
            elif route == "endless":
                self._head(h, None)
                h.wfile.write(b'{"status": "')
                self._zeros(h, route, fill=b"x")
            else:
                self._missing(h)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: what the operator is meant to do

    @staticmethod
    def _head(h: BaseHTTPRequestHandler, length: int | None) -> None:
        h.send_response(200)
        if length is not None:
            h.send_header("Content-Length", str(length))
        h.end_headers()

    @staticmethod
    def _missing(h: BaseHTTPRequestHandler) -> None:
        h.send_response(404)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _zeros(self, h: BaseHTTPRequestHandler, route: str, fill: bytes = b"\0") -> None:
        # At most zeros_per_second: endless, not a CPU hog on a shared machine (a reader that never stops would
        # otherwise hash, or write to disk, at memory speed).
        chunk = fill * CHUNK
        while not self._stopping.is_set():
            h.wfile.write(chunk)
            self._count(route, len(chunk))
            time.sleep(CHUNK / self.zeros_per_second)

    def _honest(self, h: BaseHTTPRequestHandler, rest: str) -> None:
        assert self.root is not None
        file = (self.root / rest).resolve()
        if not file.is_file() or not file.is_relative_to(self.root.resolve()):
            self._missing(h)
            return
        self._head(h, file.stat().st_size)
        sent = 0
        with file.open("rb") as f:
            while chunk := f.read(CHUNK):
                h.wfile.write(chunk)
                sent += len(chunk)
                self._count("honest", len(chunk))
                if self.on_honest is not None:
                    self.on_honest(rest, sent)


def write_key(directory: Path, name: str = "release") -> tuple[Path, bytes]:
    """A P-256 signing key file and its PEM public key (what the trusted-keys ConfigMap holds)."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / f"{name}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)


def signed_directory(directory: Path, key: Path, model_bytes: int) -> str:
    """A signed artifact directory whose ``model.skops`` has ``model_bytes`` bytes (whole MiB); its sha256."""
    directory.mkdir(parents=True)
    block = hashlib.sha256(b"weights").digest() * (MiB // 32)
    digest = hashlib.sha256()
    with (directory / "model.skops").open("wb") as f:
        for _ in range(model_bytes // MiB):
            f.write(block)
            digest.update(block)
    (directory / "bias-report.json").write_text('{"status": "pass"}')
    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    write_manifest(directory, build_manifest(directory, model="m", version="v1", format="skops",
                                             model_file="model.skops", created_at=created))
    sign_directory(directory, key)
    return digest.hexdigest()


@dataclass(frozen=True)
class HostileModel:
    """One of another tenant's models: its ``spec.artifact`` and the ArtifactVerified reason it must end with."""

    name: str
    artifact: dict[str, object]
    reason: str


def ten_hostile_models(url: str, big_sha256: str, keys_config_map: str) -> list[HostileModel]:
    """The fault table's ten hostile artifacts, against a :class:`HostileStore` at ``url`` whose root holds
    ``big/`` (a signed model of 64 MiB, sha256 ``big_sha256``) and a trusted-keys ConfigMap for its key."""
    signed = {"signature": {"configMapName": keys_config_map}}
    return [
        *(HostileModel(f"trickle-{i}", {"uri": f"{url}/trickle/model.skops", "sha256": "1" * 64,
                                        "limits": {"verifyTimeoutSeconds": 5}}, "VerificationTimedOut")
          for i in range(4)),
        *(HostileModel(f"declared-{i}", {"uri": f"{url}/declared/model.skops", "sha256": "2" * 64},
                       "ArtifactTooLarge") for i in range(2)),
        HostileModel("manifest-huge", {"uri": f"{url}/manifest-huge/model.skops", "sha256": small_model_sha256(),
                                       **signed}, "ArtifactTooLarge"),
        HostileModel("endless", {"uri": f"{url}/endless/model.skops", "sha256": "3" * 64,
                                 "limits": {"maxFileBytes": MiB}}, "ArtifactTooLarge"),
        HostileModel("big-signed", {"uri": f"{url}/honest/big/model.skops", "sha256": big_sha256, **signed},
                     "SignatureVerified"),
        HostileModel("big-over-limit", {"uri": f"{url}/honest/big/model.skops", "sha256": big_sha256, **signed,
                                        "limits": {"maxArtifactBytes": 32 * MiB}}, "ArtifactTooLarge"),
    ]
