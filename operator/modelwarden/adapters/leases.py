"""The Kubernetes edge for leader election: one ``coordination.k8s.io/v1`` Lease, read and written whole.

Bodies are raw JSON (not the client's models) so the MicroTime fields keep the exact wire format
(``2006-01-02T15:04:05.000000Z``). Updates carry the resourceVersion that was read: optimistic concurrency, a
concurrent writer gets 409 (:class:`~modelwarden.adapters.kube.Conflict`). Calls run on a thread of their own,
so renewals never queue behind the controller's API calls in the shared default executor.
"""

from __future__ import annotations

import asyncio
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelwarden.adapters.kube import KubeError, wrap_api_exception


class Leases(Protocol):
    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Lease, or None when it does not exist."""

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replace with ``body`` (whose metadata.resourceVersion must still be current, else Conflict)."""


class KubeLeases:
    def __init__(self, api_client: client.ApiClient, request_timeout: float = 5.0) -> None:
        self._api = client.CoordinationV1Api(api_client)
        self._timeout = request_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelwarden-lease")

    async def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            resp = await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(fn, *args, _preload_content=False, _request_timeout=self._timeout))
        except ApiException as e:
            raise wrap_api_exception(e, what) from e
        except Exception as e:  # connection refused, timeouts: the API server was not reached
            raise KubeError(f"{what}: {type(e).__name__}: {e}") from e
        return json.loads(resp.data)

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = await self._call(f"get Lease {namespace}/{name}",
                                                     self._api.read_namespaced_lease, name, namespace)
        except KubeError as e:
            if e.status == 404:
                return None
            raise
        return lease

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self._call(f"create Lease {namespace}/{body['metadata']['name']}",
                                                   self._api.create_namespaced_lease, namespace, body)
        return created

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        replaced: dict[str, Any] = await self._call(f"update Lease {namespace}/{name}",
                                                    self._api.replace_namespaced_lease, name, namespace, body)
        return replaced
