"""The scale bench's count of API writes by resource, read from the API server's own apiserver_request_total."""

from __future__ import annotations

from bench.scale import CONTROLLER_WRITES, metric_labels, writes_by_kind


def sample(name: str, group: str, resource: str, subresource: str, verb: str, value: float, code: str = "200") -> str:
    """One line of the API server's /metrics, labels in its order."""
    return (f'{name}{{code="{code}",component="apiserver",dry_run="",group="{group}",resource="{resource}",'
            f'scope="resource",subresource="{subresource}",verb="{verb}",version="v1"}} {value}')


TOTAL = "apiserver_request_total"
METRICS = "\n".join([
    "# TYPE apiserver_request_total counter",
    sample(TOTAL, "apps", "deployments", "", "APPLY", 7),
    sample(TOTAL, "apps", "deployments", "", "GET", 1000),
    sample(TOTAL, "apps", "deployments", "status", "PUT", 40),
    sample(TOTAL, "modelwarden.io", "mlmodels", "status", "PATCH", 3),
    sample(TOTAL, "modelwarden.io", "mlmodels", "status", "PATCH", 1, code="409"),
    sample(TOTAL, "", "events", "", "POST", 2, code="201"),
    sample(TOTAL, "events.k8s.io", "events", "", "POST", 5, code="201"),
    sample(TOTAL, "", "services", "", "DELETE", 1),
    sample(TOTAL, "coordination.k8s.io", "leases", "", "PUT", 90),
    sample("apiserver_request_duration_seconds_sum", "apps", "deployments", "", "APPLY", 0.5),
]) + "\n"


def test_labels_of_a_sample_line() -> None:
    line = 'apiserver_request_total{code="200",group="",resource="events",subresource="",verb="POST"} 2'
    assert metric_labels(line) == {"code": "200", "group": "", "resource": "events", "subresource": "",
                                   "verb": "POST"}


def test_writes_counted_by_resource_and_subresource_every_answer_code() -> None:
    writes = writes_by_kind(METRICS)
    assert writes["Deployments"] == 7  # the GET is no write; the status PUT is the controller manager's
    assert writes[CONTROLLER_WRITES] == 40
    assert writes["MLModel status"] == 4  # a conflict (409) is a write the API server answered too
    assert writes["MLModel metadata"] == 0
    assert writes["Events"] == 7  # both Event APIs
    assert writes["Services"] == 1  # a delete is a write
    assert writes["all"] == 7 + 40 + 4 + 7 + 1 + 90  # every write, leases included
    assert writes["ModelLedger"] == writes["ModelLedgerCheckpoint"] == 0
