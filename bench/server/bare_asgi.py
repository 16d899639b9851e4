"""The transport floor: uvicorn (httptools, uvloop) answering a fixed JSON body after reading the request.
Measured in the same run as the server, so the server's numbers can be read as a ratio of it on a machine
whose speed varies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
