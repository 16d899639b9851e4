"""The local, real environment ModelWarden's integration tests and demo run against.

Everything stays on this machine — loopback, and the node bridge's 198.18.0.0/15 addresses — and lives outside the
repository (``$MODELWARDEN_CACHE``, default ``~/.cache/modelwarden``): a Kubernetes control plane built from the
Go module proxy with KWOK nodes (:mod:`localenv.cluster`), a real node running images built from our own
Dockerfiles (:mod:`localenv.node`, :mod:`localenv.images`, artifacts over HTTP from :mod:`localenv.artifacts`),
Prometheus (:mod:`localenv.prometheus`) and PostgreSQL (:mod:`localenv.postgres`), both from Debian's packages.
"""

from localenv._proc import EnvironmentStartError, cache_dir

__all__ = ["EnvironmentStartError", "cache_dir"]
