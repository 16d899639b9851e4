"""Artifacts over HTTP for pods on the real node.

A ``file://`` URI names a path on the machine that wrote it; a pod's init container cannot read that path. The
local environment serves a directory over plain HTTP on the node bridge's address instead — reachable from the
pods (their gateway) and from the operator on the host, and from nowhere else.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from localenv import node as real_node


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class ArtifactServer:
    """Serve ``root`` read-only at ``http://198.18.0.1:<port>/`` until closed."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        handler = functools.partial(_QuietHandler, directory=str(self.root))
        self._server = ThreadingHTTPServer((real_node.HOST_IP, 0), handler)
        self.base_url = f"http://{real_node.HOST_IP}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="artifact-server", daemon=True)
        self._thread.start()

    def uri(self, path: Path) -> str:
        """The http:// URI of ``path``, a file under the served root."""
        return f"{self.base_url}/{path.resolve().relative_to(self.root).as_posix()}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ArtifactServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
