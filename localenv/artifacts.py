"""Artifacts over HTTP for pods on the real node.

A ``file://`` URI names a path on the machine that wrote it; a pod's init container cannot read that path. The
local environment serves a directory over plain HTTP on the node bridge's address instead — reachable from the
pods (their gateway) and from the operator on the host, and from nowhere else.

For fault tables the store can be made unavailable for a while (:meth:`ArtifactServer.unavailable_for`): it answers
503, as an object store does during an incident, and counts how often it did.
"""

from __future__ import annotations

import functools
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from localenv import node as real_node


class _StoreHTTPServer(ThreadingHTTPServer):
    # monotonic seconds until which every request is answered 503; how many were
    down_until = 0.0
    answered_503 = 0


class _QuietHandler(SimpleHTTPRequestHandler):
    server: _StoreHTTPServer

    def _unavailable(self) -> bool:
        if time.monotonic() >= self.server.down_until:
            return False
        self.server.answered_503 += 1
        self.send_error(503, "store unavailable")
        return True

    def do_GET(self) -> None:
        if not self._unavailable():
            super().do_GET()

    def do_HEAD(self) -> None:
        if not self._unavailable():
            super().do_HEAD()

    def log_message(self, format: str, *args: object) -> None:
        pass


class ArtifactServer:
    """Serve ``root`` read-only at ``http://<host>:<port>/`` until closed; ``host`` defaults to the node bridge's
    address (what pods reach), loopback serves the operator on the host only (the simulated nodes' tests)."""

    def __init__(self, root: Path, host: str = real_node.HOST_IP) -> None:
        self.root = root.resolve()
        handler = functools.partial(_QuietHandler, directory=str(self.root))
        self._server = _StoreHTTPServer((host, 0), handler)
        self.base_url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="artifact-server", daemon=True)
        self._thread.start()

    def uri(self, path: Path) -> str:
        """The http:// URI of ``path``, a file under the served root."""
        return f"{self.base_url}/{path.resolve().relative_to(self.root).as_posix()}"

    def unavailable_for(self, seconds: float) -> None:
        """Answer every request 503 for the next ``seconds``."""
        self._server.down_until = time.monotonic() + seconds

    @property
    def answered_503(self) -> int:
        return self._server.answered_503

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ArtifactServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
