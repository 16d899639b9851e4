"""file:// artifacts work only where the file is: refused, with the reason, by an operator running in a pod and by a
pod's fetch that cannot see the path."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from model_server.fetch import FetchError, fetch
from modelwarden.adapters.artifact_store import ArtifactUnavailable, URIArtifactStore


def test_an_operator_on_the_machine_hashes_a_file_uri(tmp_path: Path) -> None:
    model = tmp_path / "model.skops"
    model.write_bytes(b"weights")
    store = URIArtifactStore(allow_file=True)
    assert asyncio.run(store.sha256(model.as_uri())) == hashlib.sha256(b"weights").hexdigest()


def test_an_operator_in_a_pod_refuses_a_file_uri_and_says_why(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.skops"
    model.write_bytes(b"weights")
    # What the kubelet sets in every container.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "198.19.0.1")
    store = URIArtifactStore()
    with pytest.raises(ArtifactUnavailable, match=r"file:// artifacts are local-only.*serve the artifact over https"):
        asyncio.run(store.sha256(model.as_uri()))
    with pytest.raises(ArtifactUnavailable, match="local-only"):
        asyncio.run(store.read_json((tmp_path / "bias-report.json").as_uri()))


def test_a_pod_that_cannot_see_a_file_uri_says_why(tmp_path: Path) -> None:
    missing = (tmp_path / "elsewhere" / "model.skops").as_uri()
    with pytest.raises(FetchError, match=r"names a path on the machine that wrote it.*http\(s\)://"):
        fetch(missing, "0" * 64, tmp_path / "artifact")
