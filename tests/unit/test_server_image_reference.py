"""One server image reference: the one model_server/Dockerfile documents is the one the local environment builds,
the operator and the chart default to, and a pod gets; the operator's setting and a model's spec override it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from localenv import images
from modelwarden.adapters import manifests
from modelwarden.api import v1alpha1 as api

ROOT = Path(__file__).resolve().parents[2]


def _model() -> manifests.ModelObject:
    return manifests.ModelObject(name="m", namespace="ns", uid="u-1")


def _spec(**serving: object) -> api.MLModelSpec:
    return api.MLModelSpec.model_validate({
        "version": "v1", "artifact": {"uri": "https://example.invalid/m/model.skops", "sha256": "a" * 64},
        "featureContract": {"name": "c", "features": ["f"], "nFeatures": 1}, "serving": serving})


def _images(body: dict[str, object]) -> set[str]:
    pod = body["spec"]["template"]["spec"]  # type: ignore[index]
    return {c["image"] for c in [*pod["initContainers"], *pod["containers"]]}


def test_the_documented_built_and_default_references_are_one() -> None:
    documented = re.findall(r"-t (\S+) \.", (ROOT / "model_server" / "Dockerfile").read_text())
    assert documented == [manifests.DEFAULT_SERVER_IMAGE]
    assert images.SERVER_IMAGE == manifests.DEFAULT_SERVER_IMAGE
    chart = yaml.safe_load((ROOT / "charts" / "modelwarden" / "Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts" / "modelwarden" / "values.yaml").read_text())["serverImage"]
    assert f"{values['repository']}:{values['tag'] or chart['appVersion']}" == manifests.DEFAULT_SERVER_IMAGE


def test_a_pod_gets_the_default_then_the_operators_setting_then_the_models_own() -> None:
    artifact = api.ArtifactVersion(version="v1", uri="https://example.invalid/m/model.skops", sha256="a" * 64)
    default = manifests.deployment_manifest(_model(), _spec(), "stable", artifact, 1, "fp")
    assert _images(default) == {manifests.DEFAULT_SERVER_IMAGE}
    configured = manifests.deployment_manifest(_model(), _spec(), "stable", artifact, 1, "fp", "registry.example/ms:2")
    assert _images(configured) == {"registry.example/ms:2"}
    own = manifests.deployment_manifest(_model(), _spec(image="registry.example/own:3"), "stable", artifact, 1, "fp",
                                   "registry.example/ms:2")
    assert _images(own) == {"registry.example/own:3"}
