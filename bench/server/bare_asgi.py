"""The transport floor: a bare ASGI app answering a fixed JSON body after reading the request, served by uvicorn
(httptools, uvloop: ``uvicorn bare_asgi:app``) or by model_server's own transport (``python bare_asgi.py PORT``).
Measured in the same run as the server, so the server's numbers can be read as a ratio of it on a machine
whose speed varies."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

_BODY = b'{"prediction":0.0}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


if __name__ == "__main__":  # the same app on model_server's transport, on 127.0.0.1:PORT
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from model_server.config import Settings
    from model_server.transport import HttpServer

    settings = Settings(model_name="bare", model_version="0", artifact_dir=Path("."), artifact_sha256="0" * 64,
                        model_format="skops", host="127.0.0.1", port=int(sys.argv[1]))
    sys.exit(HttpServer(app, settings).run())
