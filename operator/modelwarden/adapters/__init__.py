"""The edges (kube, Prometheus, traffic routers, Grafana, notifier, artifact store), each behind a Protocol."""
