"""What the rollback fault tables count, shared by the simulated-node table (``test_rollback_fault_table.py``) and
the real-node one (``test_real_node_fault_table.py``): pages at a real webhook receiver, and the rollback decisions
in the model's decision ledger."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

from kubernetes import client

from modelwarden.api import v1alpha1 as api


class Pager:
    """A generic webhook receiver on loopback (``MODELWARDEN_WEBHOOK_URL``): every notification's body."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        pager = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                pager.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    @property
    def pages(self) -> int:
        """Pages counted by the incident they carry, as PagerDuty's dedup_key does: a re-sent page is one page."""
        return len({(n.get("rollback") or {}).get("id") for n in self.received if n.get("severity") == "page"})


@contextlib.contextmanager
def serving(*servers: http.server.ThreadingHTTPServer) -> Iterator[None]:
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def ledger_decisions(admin: client.ApiClient, namespace: str) -> list[str]:
    """Every decision recorded in ``namespace``'s ModelLedger segments, in no particular order."""
    ledger: Any = client.CustomObjectsApi(admin).list_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.LEDGER_PLURAL)
    return [str(r["decision"]) for o in ledger["items"] for r in o["spec"]["records"]]
