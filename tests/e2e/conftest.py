"""One control plane and real node for every story: each demo finds it running and leaves it running, as `make demo`
does after `make cluster-up` (a demo that starts the cluster itself also stops it, so five demos would start and
stop it five times). Stopped at the end if started here. If it cannot start, the run fails and says why."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localenv import cluster as cluster_env


@pytest.fixture(scope="session", autouse=True)
def cluster() -> Iterator[cluster_env.Cluster]:
    with cluster_env.running() as running:
        yield running
