"""The local, real environment ModelWarden's integration tests and demo run against.

Everything listens on loopback and lives outside the repository (``$MODELWARDEN_CACHE``, default
``~/.cache/modelwarden``): a Kubernetes control plane built from the Go module proxy with KWOK nodes
(:mod:`localenv.cluster`), Prometheus (:mod:`localenv.prometheus`) and PostgreSQL
(:mod:`localenv.postgres`), both from Debian's packages.
"""

from localenv._proc import EnvironmentStartError, cache_dir

__all__ = ["EnvironmentStartError", "cache_dir"]
