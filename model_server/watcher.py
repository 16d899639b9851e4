"""Follow the MLModel's ``spec.enabled`` (the kill switch) through the Kubernetes API.

Read-only: ``get`` and ``watch`` on ``mlmodels.modelwarden.io`` for one name in one namespace (the pod's
service account needs no more). Credentials: the in-cluster service account when running in a pod, else
``KUBECONFIG`` (or ``~/.kube/config``).

When the API server is unreachable, or the MLModel is missing, the last known position stays: an outage of
the control plane must not flip the switch either way. Changes arrive through a watch, so a flip takes
effect within a second or two; the watch is re-established (from a fresh ``get``) whenever it ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from model_server.logs import EventLog

GROUP = "modelwarden.io"
VERSION = "v1alpha1"
PLURAL = "mlmodels"


def enabled_from(mlmodel: Mapping[str, Any]) -> bool | None:
    """``spec.enabled`` of an MLModel object: ``True`` when absent (the CRD's default), ``None`` when it is not
    a boolean (then nothing is changed)."""
    spec = mlmodel.get("spec")
    if not isinstance(spec, Mapping):
        return None
    enabled = spec.get("enabled", True)
    return enabled if isinstance(enabled, bool) else None


class MLModelWatcher:
    def __init__(self, namespace: str, name: str, on_enabled: Callable[[bool, str], None], log: EventLog, *,
                 api_client: Any = None, watch_timeout_seconds: int = 60, retry_seconds: float = 2.0) -> None:
        self.namespace = namespace
        self.name = name
        self._on_enabled = on_enabled
        self._log = log
        self._api_client = api_client
        self._timeout = watch_timeout_seconds
        self._retry = retry_seconds
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name="mlmodel-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def read_once(self, timeout_seconds: float = 5.0) -> None:
        """One read before the server decides to load anything, so that a restarted server starts in the
        position the MLModel says; if it cannot be read, MODEL_ENABLED stands until the watch succeeds."""
        try:
            self.apply(self._client().get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=timeout_seconds))
        except Exception as e:
            self._log.event("ML_GOVERNANCE", "MLMODEL_READ_FAILED",
                            f"cannot read MLModel {self.namespace}/{self.name} at start ({type(e).__name__}: {e}); "
                            "starting with MODEL_ENABLED", level=logging.WARNING)

    def apply(self, mlmodel: Mapping[str, Any]) -> None:
        enabled = enabled_from(mlmodel)
        if enabled is not None:
            self._on_enabled(enabled, f"mlmodel {self.namespace}/{self.name}")

    def _client(self) -> Any:
        from kubernetes import client, config

        if self._api_client is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
                self._api_client = client.ApiClient()
            except config.ConfigException:
                self._api_client = config.new_client_from_config()  # type: ignore[no-untyped-call]
        return client.CustomObjectsApi(self._api_client)

    def _run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        while not self._stop.is_set():
            try:
                api = self._client()
                obj = api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)
                self.apply(obj)
                self._watch = watch.Watch()  # type: ignore[no-untyped-call]
                for event in self._watch.stream(
                        api.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                        field_selector=f"metadata.name={self.name}",
                        resource_version=obj["metadata"]["resourceVersion"], timeout_seconds=self._timeout):
                    if self._stop.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.apply(event["object"])
                    elif event["type"] == "ERROR":
                        break  # e.g. 410 Gone: start again from a fresh get
            except ApiException as e:
                self._log.throttled(f"watch-{e.status}", 60, "ML_GOVERNANCE", "MLMODEL_WATCH_FAILED",
                                    f"cannot read MLModel {self.namespace}/{self.name}: {e.status} {e.reason}; "
                                    "keeping the last known spec.enabled", level=logging.WARNING, status=e.status)
            except Exception as e:
                self._log.throttled("watch-error", 60, "ML_GOVERNANCE", "MLMODEL_WATCH_FAILED",
                                    f"{type(e).__name__}: {e}; keeping the last known spec.enabled",
                                    level=logging.WARNING)
            self._stop.wait(self._retry)
